"""Atomic file writes: a temp file in the target's folder, then ``os.replace``.

Readers never see a half-written file, and a failed write leaves neither the target nor a
temp file behind. Temp files are hidden (``.NAME.XXXXXXXX.tmpSUFFIX``) and keep the target's
suffix, so libraries that pick a format from the extension (PIL, trimesh) still work.
"""
from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


def _create_temp(target: Path) -> Path:
    """Create an empty, new temp file beside `target` (mode 0o666 minus the umask)."""
    while True:
        temp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return temp
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    """Flush a written file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_outputs(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield one temp path per target (same folder, same suffix); write to them in the block.

    On success every temp is fsynced and renamed onto its target, in order, so put the main
    file last: it then appears only once its companions exist. On any exception the temps
    are removed and the targets are left untouched. Missing parent folders are created.
    """
    targets = [Path(p) for p in paths]
    if len(set(targets)) != len(targets):
        raise ValueError(f"atomic_outputs: duplicate target paths in {targets}")
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_create_temp(target))
        yield list(temps)
        for temp in temps:
            _fsync(temp)
        for target in targets:
            os.replace(temps[0], target)
            temps.pop(0)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
            logger.debug("removed temp file %s", temp)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` on success and is removed on error."""
    with atomic_outputs([path]) as (temp,):
        yield temp


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_output(Path(path)) as temp:
        temp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    return atomic_write_bytes(path, text.encode(encoding))
