"""Batch planning: which assets, where their outputs go, and which are already up to date.

Items come from a folder (every mesh inside, recursively; the prompt from a ``prompt.txt``
beside the mesh, else the run's prompt) or a manifest (``.csv`` or ``.jsonl`` rows with
``mesh``, ``prompt``, optional ``output`` and any Config field). Outputs mirror the input
tree under the output folder. Re-running skips outputs that are up to date (`is_up_to_date`).
"""
from __future__ import annotations

import csv
import json
import os
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError, InputError
from ..export import SUPPORTED_SUFFIXES, output_files, read_metadata, to_jsonable
from ..mesh_io import SUPPORTED_EXTENSIONS, is_mesh_file

REPORT_NAME = "report.json"
ERRORS_LOG = "errors.log"  # beside the report: tracebacks of assets that failed unexpectedly
PROMPT_FILE = "prompt.txt"
MANIFEST_SUFFIXES = (".csv", ".jsonl")
# Settings that decide where and how a texture is computed, not what it is: the device and
# rasterizer (a run moved from cuda:0 to cuda:1, or onto Ray, is the same job) and the bit
# depth of --save-maps PNGs (outputs always embed 8-bit maps). Resume ignores them.
RESULT_NEUTRAL_SETTINGS = frozenset({"device", "renderer", "map_bits"})
SETTING_COLUMNS = frozenset(f.name for f in fields(Config))  # every Config field is a manifest column
_ROW_KEYS = ("mesh", "output")


@dataclass(frozen=True)
class BatchItem:
    """One asset: the mesh, where its output goes, its whole Config and its label in reports."""

    mesh: Path
    output: Path
    config: Config
    asset: str



# ----------------------------------------------------------------------------- discovery


def discover_items(source: str | Path, output_dir: str | Path, prompt: str | None = None, *,
                   config: Config | None = None, output_format: str = "glb") -> list[BatchItem]:
    """The items of a folder (recursively) or a manifest (.csv/.jsonl), outputs under `output_dir`.

    Raises InputError/ConfigError naming the file (and manifest line) for anything unusable:
    no meshes, a mesh without a prompt, a bad manifest row, two items writing the same file.
    """
    source, output_dir = Path(source), Path(output_dir).resolve()
    base = (config or Config()).updated(prompt=prompt)
    suffix = output_suffix(output_format)
    if source.is_dir():
        items = _folder_items(source, output_dir, base, suffix)
    elif source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        items = _manifest_items(source, output_dir, base, suffix)
    elif not source.exists():
        raise InputError(f"{source}: no such folder or manifest")
    else:
        raise InputError(f"{source}: not a folder or a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    check_plan(items, output_dir / REPORT_NAME)
    return items


def output_suffix(output_format: str) -> str:
    suffix = "." + output_format.lower().lstrip(".")
    if suffix not in SUPPORTED_SUFFIXES:
        raise ConfigError(f"unsupported output format {output_format!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    return suffix


def _folder_items(root: Path, output_dir: Path, base: Config, suffix: str) -> list[BatchItem]:
    """Every mesh under `root` with its prompt (prompt.txt beside it, else the base prompt)."""
    meshes = find_meshes(root, exclude=output_dir)
    if not meshes:
        raise InputError(f"{root}: no mesh files ({', '.join(SUPPORTED_EXTENSIONS)}) in this folder or below")
    items, unprompted = [], []
    for mesh in meshes:
        relative = mesh.relative_to(root)
        prompt = _read_prompt(mesh.parent / PROMPT_FILE) or base.prompt
        if not prompt.strip():
            unprompted.append(relative.as_posix())
            continue
        output = (output_dir / relative).with_suffix(suffix)
        items.append(BatchItem(mesh.resolve(), output, base.updated(prompt=prompt), relative.as_posix()))
    if unprompted:
        listed = ", ".join(unprompted[:3]) + (f" and {len(unprompted) - 3} more" if len(unprompted) > 3 else "")
        raise InputError(f"{root}: no prompt for {listed}; pass --prompt or put a {PROMPT_FILE} beside them")
    return items


def find_meshes(root: Path, exclude: Path | None = None) -> list[Path]:
    """Mesh files under `root`, sorted; hidden files and folders and the `exclude` folder are skipped."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith(".") and (Path(folder) / d).resolve() != exclude)
        found += [Path(folder) / f for f in files if not f.startswith(".") and is_mesh_file(Path(folder) / f)]
    return sorted(found)


def _read_prompt(path: Path) -> str | None:
    """The stripped text of a prompt file, or None when it is missing or empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read prompt file: {exc}") from None
    return text or None


def _manifest_items(manifest: Path, output_dir: Path, base: Config, suffix: str) -> list[BatchItem]:
    """One item per manifest row; meshes relative to the manifest's folder."""
    rows = _csv_rows(manifest) if manifest.suffix.lower() == ".csv" else _jsonl_rows(manifest)
    items = [row_item(row, f"{manifest}:{line}", manifest.parent, output_dir, base, suffix) for line, row in rows]
    if not items:
        raise InputError(f"{manifest}: the manifest has no rows")
    return items


def _csv_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV with a header line; blank rows skipped."""
    with _open_manifest(manifest) as handle:
        reader = csv.DictReader(handle)
        columns = [_column(name) for name in reader.fieldnames or []]
        if "mesh" not in columns:
            raise ConfigError(f"{manifest}:1: the header needs a 'mesh' column (and usually 'prompt')")
        _check_columns(columns, f"{manifest}:1")
        for row in reader:
            if None in row:
                raise ConfigError(f"{manifest}:{reader.line_num}: more values than header columns")
            if any((value or "").strip() for value in row.values()):
                yield reader.line_num, row


def _jsonl_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file; blank lines skipped."""
    with _open_manifest(manifest) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{manifest}:{line}: not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{manifest}:{line}: expected a JSON object like {{\"mesh\": ..., \"prompt\": ...}}")
            yield line, row


def _open_manifest(manifest: Path) -> typing.TextIO:
    try:
        return manifest.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"{manifest}: cannot read manifest: {exc.strerror}") from None


def row_item(row: Mapping[str, Any], where: str, root: Path, output_dir: Path | None, base: Config,
             suffix: str) -> BatchItem:
    """A manifest row (or a mapping given to texture_many) as a BatchItem; errors name `where`."""
    values = {_column(k): v for k, v in row.items() if v is not None and v != ""}
    _check_columns(values, where)
    mesh_text = str(values.pop("mesh", "")).strip()
    if not mesh_text:
        raise ConfigError(f"{where}: no mesh given")
    mesh = (root / mesh_text).resolve()
    output = _row_output(values.pop("output", None), mesh, root, output_dir, suffix, where)
    try:
        config = base.updated(**values)  # Config coerces text (CSV) to each setting's type
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not config.prompt.strip():
        raise ConfigError(f"{where}: no prompt; add a prompt column or pass --prompt")
    return BatchItem(mesh, output, config, mesh_text)


def _column(name: Any) -> str:
    return str(name).strip().replace("-", "_")


def _check_columns(names: Iterable[str], where: str) -> None:
    unknown = sorted(set(names) - SETTING_COLUMNS - set(_ROW_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown column(s) {', '.join(unknown)}; use mesh, prompt, output "
                          "or setting names such as negative_prompt, seed, steps")


def _row_output(text: Any, mesh: Path, root: Path, output_dir: Path | None, suffix: str, where: str) -> Path:
    """The row's `output` (relative to the output folder), else the mesh's path mirrored there."""
    if text is not None:
        output = Path(str(text).strip())
        if output.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise ConfigError(f"{where}: output {str(text)!r} must end in {', '.join(SUPPORTED_SUFFIXES)}")
    else:
        try:
            output = mesh.relative_to(root.resolve()).with_suffix(suffix)
        except ValueError:  # a mesh outside the manifest's folder lands at the top
            output = Path(mesh.name).with_suffix(suffix)
    if output.is_absolute():
        return output.resolve()
    if output_dir is None:
        raise ConfigError(f"{where}: a relative output needs an output folder")
    return (Path(output_dir) / output).resolve()


def check_plan(items: Sequence[BatchItem], report_path: Path | None = None) -> None:
    """Refuse a plan in which two items (or an item and the report) write the same file, or an
    output would replace an input mesh."""
    inputs = {item.mesh for item in items}
    owners: dict[Path, str] = {}
    if report_path is not None:
        owners = {path.resolve(): "the batch report" for path in (report_path, report_path.with_name(ERRORS_LOG))}
    for item in items:
        *companions, main = output_files(item.output, normal_map=item.config.normal_map)
        for target in (main, *companions):
            target = target.resolve()
            if target in inputs:
                raise InputError(f"{item.asset}: its output {target} would replace an input mesh; "
                                 "choose another output folder or format")
            if target in owners:
                raise InputError(f"{item.asset}: its output {target} is also written by {owners[target]}; "
                                 "give them different outputs (a manifest's output column)")
            owners[target] = item.asset


# ----------------------------------------------------------------------------- resume


def is_up_to_date(item: BatchItem) -> bool:
    """True when the item's output exists, was made from the same mesh file with the same
    settings (all but RESULT_NEUTRAL_SETTINGS), and is not older than the mesh."""
    try:
        record = read_metadata(item.output)
        newer = item.output.stat().st_mtime >= item.mesh.stat().st_mtime
    except (InputError, OSError):
        return False
    recorded = record.get("settings")
    if not isinstance(recorded, dict) or record.get("input") != str(item.mesh):
        return False
    return newer and _comparable(recorded) == _comparable(to_jsonable(item.config.to_dict()))


def _comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in RESULT_NEUTRAL_SETTINGS}
