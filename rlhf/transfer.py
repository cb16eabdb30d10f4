"""Folders as {relative path: bytes}, so a saved policy crosses Ray between nodes without a shared filesystem:
learner 0 may run on another node than the driver that writes the run folder."""

from __future__ import annotations

from pathlib import Path


def read_folder(path: Path) -> dict[str, bytes]:
    """Every file under ``path``, keyed by its path relative to it."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def write_folder(path: Path, files: dict[str, bytes]) -> None:
    """Writes ``read_folder``'s result under ``path``; a key that would land outside it is an error."""
    root = path.resolve()
    for name, data in files.items():
        target = (path / name).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"{name!r} would be written outside {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
