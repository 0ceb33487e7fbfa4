"""The Blender add-on (`csd_texture_blender`), shipped as package data so a pip install has it.

`write_addon_zip` packs the add-on's files into a zip that Blender installs with
Edit > Preferences > Add-ons > Install (or `bpy.ops.preferences.addon_install`). The add-on
itself runs inside Blender's Python: it never imports csd_texture or torch, only calls the
`csd-texture` command in a subprocess.
"""
from __future__ import annotations

import zipfile
from importlib import resources
from pathlib import Path

from ..fileio import atomic_output

ADDON_MODULE = "csd_texture_blender"


def addon_files() -> dict[str, bytes]:
    """Zip member name (``csd_texture_blender/NAME.py``) -> file content, for every add-on file."""
    folder = resources.files(__package__) / ADDON_MODULE
    return {f"{ADDON_MODULE}/{entry.name}": entry.read_bytes()
            for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.is_file() and entry.name.endswith(".py")}


def write_addon_zip(path: str | Path) -> Path:
    """Write the installable add-on zip to `path` (atomically); returns the path."""
    path = Path(path)
    files = addon_files()
    with atomic_output(path) as temp:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():  # fixed dates: the same add-on gives the same zip
                archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data,
                                 compress_type=zipfile.ZIP_DEFLATED)
    return path


__all__ = ["ADDON_MODULE", "addon_files", "write_addon_zip"]
