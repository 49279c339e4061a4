"""Writing files so that nothing is ever half-written, and output folders that can't surprise.

Every file that another run or a reader may open while we write it (checkpoints, split.csv,
metrics.csv, the decode cache, ONNX exports) goes through `atomic_write`: written under a temporary
name beside its target, then renamed over it, which POSIX and Windows both do in one step.

An output folder that `--overwrite` replaces is set aside while the command runs, not emptied
first (`earlier_outputs_kept`, around every command of the CLI): a command stopped by Ctrl-C or an
error leaves the earlier output as it was.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import WbcnetError

# What ships inside the package: the models, the sample cells and fields, the tuning space.
ASSETS = Path(__file__).resolve().parents[1] / "assets"


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
    """A fresh output folder: refuse one that holds files unless `overwrite`. Then its files are set
    aside until the command has finished (inside earlier_outputs_kept()), or removed now (outside)."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise WbcnetError(f"{folder}: exists and is not empty; pick another --out or pass --overwrite")
        if _set_aside is not None:
            _set_aside.append(_put_aside(folder))
        else:
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return ensure_writable_dir(folder, what)


# (folder, where its earlier files wait, whether the folder itself was moved) per folder set aside by
# the command running now; None: no command keeps them (prepare_output_dir empties at once).
_set_aside: list[tuple[Path, Path, bool]] | None = None


@contextmanager
def earlier_outputs_kept():
    """Around a command: a folder prepare_output_dir(overwrite=True) replaces is set aside (renamed
    to a hidden `.NAME.earlier-PID` beside it, or into `NAME/.wbcnet-earlier-PID` where it can't
    be), and put back as it was if the command raises (Ctrl-C included), or removed once it
    returned. A process killed outright leaves the earlier files in that hidden folder."""
    global _set_aside
    outer, _set_aside = _set_aside, []
    mine = _set_aside
    try:
        yield
    except BaseException:
        _set_aside = outer
        _put_back(mine)
        raise
    _set_aside = outer
    for _, aside, _ in mine:
        shutil.rmtree(aside, ignore_errors=True)


def _put_aside(folder: Path) -> tuple[Path, Path, bool]:
    whole = folder.absolute()
    # A link stays a link, and the folder we work in stays where it is: their files are moved instead.
    if not whole.is_symlink() and not Path.cwd().is_relative_to(whole.resolve()):
        aside = whole.parent / f".{whole.name}.earlier-{os.getpid()}"
        try:
            os.rename(whole, aside)  # one step; not for a mount point, nor in a folder we can't write in
        except OSError:
            pass
        else:
            whole.mkdir()
            os.chmod(whole, stat.S_IMODE(aside.stat().st_mode))
            return whole, aside, True
    aside = whole / f".wbcnet-earlier-{os.getpid()}"
    try:
        aside.mkdir()
        for child in list(whole.iterdir()):
            if child != aside:
                os.rename(child, aside / child.name)
    except OSError as e:
        raise WbcnetError(f"{folder}: cannot set its files aside to replace them ({_reason(e)}); nothing was "
                          f"removed") from None
    return whole, aside, False


def _put_back(entries: list[tuple[Path, Path, bool]]) -> None:
    """The folders set aside, as they were (what the stopped command wrote in them is removed);
    Ctrl-C waits meanwhile."""
    with _uninterrupted():
        for folder, aside, moved in reversed(entries):
            try:
                if moved:
                    if folder.is_dir() and not folder.is_symlink():
                        shutil.rmtree(folder)
                    os.rename(aside, folder)
                else:
                    for child in folder.iterdir():
                        if child != aside:
                            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                    for child in aside.iterdir():
                        os.rename(child, folder / child.name)
                    aside.rmdir()
            except OSError as e:
                print(f"warning: {folder}: could not put its earlier files back ({_reason(e)}); they are in "
                      f"{aside}", file=sys.stderr)


@contextmanager
def _uninterrupted():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


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
