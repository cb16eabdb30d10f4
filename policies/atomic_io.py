"""Atomic writes: a folder or file appears complete or not at all, so a crashed or killed process never leaves
half a checkpoint (a power cut is beyond this: nothing is fsynced)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where the OS, the C library
    or the file system cannot, and nothing was changed."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # no such call, flag or file-system support
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty staging folder beside ``target``; on success it takes ``target``'s place in one atomic step
    (a rename, or an exchange with the old copy), so a reader of ``target`` sees the old folder or the new one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        yield staging
        if not target.exists():
            os.replace(staging, target)
        elif exchange(staging, target):  # one step: target is the old copy, then the new one
            shutil.rmtree(staging, ignore_errors=True)
        else:
            # Two renames: no moment without a complete copy on disk, but a moment without one at ``target``. The
            # old copy's name is unique, so the leftover of a run killed mid-cleanup cannot block this one.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old)  # a directory may replace an empty one
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes text to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
