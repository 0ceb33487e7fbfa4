"""Store an uploaded mesh (or a zip of a glTF/OBJ with its files) inside a job's folder.

The server picks every name it writes: a single file becomes ``input/mesh.EXT``; a zip is
unpacked into ``input/`` with each member confined there (no absolute paths, no ``..``, no
symbolic links, bounded size), since a glTF's own references must keep their relative names.
Loading then goes through the same confined loader as the CLI.
"""
from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ..mesh_io import SUPPORTED_EXTENSIONS

INPUT = "input"
MAX_ZIP_MEMBERS = 10_000


def upload_suffix(filename: str) -> str:
    """The lower-case extension of a client file name, if csd-texture reads it (or .zip)."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix not in (*SUPPORTED_EXTENSIONS, ".zip"):
        raise InputError(f"{filename}: unsupported upload; send a mesh ({', '.join(SUPPORTED_EXTENSIONS)}) "
                         "or a .zip of a glTF/OBJ with its files")
    return suffix


def store_upload(data_path: Path, filename: str, job_folder: Path, max_bytes: int) -> str:
    """Move the uploaded file at `data_path` into `job_folder`; returns the mesh's path relative
    to `job_folder`. Raises InputError (one line) for anything unusable."""
    suffix = upload_suffix(filename)
    folder = job_folder / INPUT
    folder.mkdir(parents=True)
    if suffix != ".zip":
        target = folder / f"mesh{suffix}"
        data_path.replace(target)
        return f"{INPUT}/{target.name}"
    meshes = _unpack(data_path, filename, folder, max_bytes)
    data_path.unlink()
    if len(meshes) != 1:
        found = ", ".join(sorted(meshes)) or "none"
        raise InputError(f"{filename}: the zip must hold exactly one mesh file ({', '.join(SUPPORTED_EXTENSIONS)}); "
                         f"found {found}")
    return f"{INPUT}/{meshes[0]}"


def _unpack(archive_path: Path, filename: str, folder: Path, max_bytes: int) -> list[str]:
    """Extract a zip into `folder` (confined, bounded); returns the mesh members' names."""
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{filename}: not a valid zip file ({exc})") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise InputError(f"{filename}: the zip holds more than {MAX_ZIP_MEMBERS} files")
        if sum(m.file_size for m in members) > max_bytes:
            raise InputError(f"{filename}: the zip unpacks to more than {max_bytes // 2**20} MB")
        names = [_member_path(m, filename) for m in members]
        for member, name in zip(members, names):
            target = folder.joinpath(*name.parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "xb") as sink:
                    written = 0
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > member.file_size:  # the header lied about the size
                            raise InputError(f"{filename}: {member.filename}: larger than its zip header says")
                        sink.write(chunk)
            except (OSError, zipfile.BadZipFile, RuntimeError) as exc:  # duplicates, file-vs-folder, encrypted
                raise InputError(f"{filename}: {member.filename}: cannot unpack ({exc})") from exc
    return [str(n) for n in names if n.suffix.lower() in SUPPORTED_EXTENSIONS and not n.name.startswith("._")
            and "__MACOSX" not in n.parts]


def _member_path(member: zipfile.ZipInfo, filename: str) -> PurePosixPath:
    """A zip member's relative path, or InputError if it could leave the folder."""
    raw = member.filename
    name = PurePosixPath(raw.replace("\\", "/"))
    mode = member.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError(f"{filename}: {raw}: symbolic links are not accepted in uploads")
    if name.is_absolute() or ":" in raw or ".." in name.parts or not name.parts or "\0" in raw:
        raise InputError(f"{filename}: {raw}: unsafe path in the zip (absolute or leaving its folder)")
    return PurePosixPath(*[p for p in name.parts if p != "."])
