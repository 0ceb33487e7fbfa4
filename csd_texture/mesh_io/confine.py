"""Path confinement, a security boundary: an asset may only reference files inside its own folder.

Only relative paths inside the asset's folder and ``data:`` URIs are followed; trimesh parses
from memory with `FolderResolver`, so nothing else is ever opened.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote

import trimesh

from ..errors import UnsafeReferenceError

log = logging.getLogger(__name__)


class FolderResolver(trimesh.resolvers.Resolver):
    """Gives trimesh the bytes of files inside one folder, and nothing else.

    A refused or missing reference is logged once and raised; trimesh's OBJ loader then
    carries on without that material or texture."""

    def __init__(self, folder: Path, label: str) -> None:
        self.folder = folder.resolve()
        self.label = label
        self._warned: set[str] = set()

    def get(self, name: str) -> bytes:
        try:
            path = confined_path(name, self.folder, self.label)
        except UnsafeReferenceError as exc:
            self._warn_once(name, f"{exc}; ignoring it")
            raise
        if not path.is_file():
            self._warn_once(name, f"{self.label}: referenced file {name!r} not found; ignoring it")
            raise FileNotFoundError(name)
        return path.read_bytes()

    def write(self, name: str, data: str | bytes) -> None:
        raise UnsafeReferenceError(f"{self.label}: refusing to write {name!r}: inputs are never modified")

    def namespaced(self, namespace: str) -> FolderResolver:
        return FolderResolver(confined_path(namespace, self.folder, self.label), self.label)

    def keys(self):
        return iter(())

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning(message)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def confined_path(reference: str, folder: Path, label: str) -> Path:
    """The file a relative reference names, or UnsafeReferenceError if it leaves `folder`."""
    text = unquote(reference.strip()).replace("\\", "/")
    if _SCHEME.match(reference.strip()) and not PureWindowsPath(text).drive:
        raise UnsafeReferenceError(
            f"{label}: unsafe reference {reference!r}: URLs and schemes are not allowed "
            "(only relative paths inside the asset's folder or data: URIs)"
        )
    if not text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise UnsafeReferenceError(f"{label}: unsafe reference {reference!r}: absolute paths are not allowed")
    target = (folder / text).resolve()
    if not target.is_relative_to(folder):
        why = "it escapes the asset's folder ('..')" if ".." in PurePosixPath(text).parts else (
            "it is a symbolic link that points outside the asset's folder"
        )
        raise UnsafeReferenceError(f"{label}: unsafe reference {reference!r}: {why}")
    return target
