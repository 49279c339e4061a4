"""Writing files so that nothing is ever half-written, and output folders that can't surprise.

Every file that another run or a reader may open while we write it (checkpoints, split.csv,
metrics.csv, the decode cache, ONNX exports) goes through `atomic_write`: written under a temporary
name beside its target, then renamed over it, which POSIX and Windows both do in one step.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import WbcnetError


@contextmanager
def atomic_write(path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    with atomic_write("x.csv") as tmp:
        tmp.write_text(...)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def ensure_writable_dir(folder, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove we can write in it, before any long work starts."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WbcnetError(f"{folder}: is a file, not a folder; give a folder as the {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".wbcnet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WbcnetError(f"{folder}: cannot write the {what} here ({_reason(e)})") from None
    return folder


def ensure_writable_file(path, what: str = "output file") -> Path:
    """Check that `path` can be created (its folder exists and is writable) without leaving it behind."""
    path = Path(path)
    if path.is_dir():
        raise WbcnetError(f"{path}: is a folder; give a file name for the {what}")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise WbcnetError(f"{path}: cannot write the {what} (the file is read-only)")
    return path


def prepare_output_dir(folder, overwrite: bool = False, what: str = "output folder") -> Path:
    """A fresh output folder: refuse one that holds files unless `overwrite` (then empty it)."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise WbcnetError(f"{folder}: exists and is not empty; pick another --out or pass --overwrite")
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return ensure_writable_dir(folder, what)


def disk_full(e: BaseException) -> bool:
    """Whether `e` is the disk (or the user's quota) running out of space."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(e: OSError, what: str = "") -> str:
    """One line for a full disk: where it happened and what to do."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}no space left on the device{' writing ' + what if what else ''}; free some space and run again"


def _reason(e: OSError) -> str:
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or str(e)
