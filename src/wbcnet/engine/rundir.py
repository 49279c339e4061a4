"""A run's folder: made new (never over another run), checked before a resume, marked done,
and removed again when a run fails before its first checkpoint."""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

from ..core.errors import WbcnetError
from ..core.files import ensure_writable_dir


def new_run_dir(out: str | None, prefix: str, preliminary: set[str]) -> Path:
    """The folder of a new run: `out`, or runs/PREFIX-STAMP. An existing `out` is taken only if a
    failed start left nothing in it but `preliminary` files (no checkpoint): then they are replaced."""
    if out:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise WbcnetError(f"{out}: --out is a file; give a folder for the run")
        if out.is_dir():
            contents = {p.name for p in out.iterdir()}
            if contents - preliminary:
                raise WbcnetError(f"{out}: run folder exists and holds a run; pick a new --out "
                                  f"or continue it with --resume {out}")
            for name in contents:
                (out / name).unlink()
        return ensure_writable_dir(out, "run folder")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{prefix}-{stamp}"
    k = 1
    while out.exists():
        out = Path("runs") / f"{prefix}-{stamp}-{k}"
        k += 1
    return ensure_writable_dir(out, "run folder")


def open_resume(run_dir, needs: tuple[str, ...]) -> Path:
    """`run_dir` if a run there can be continued (not done, every file of `needs` there), else a
    WbcnetError that says why not; reads only."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WbcnetError(f"{run_dir}: no run folder to resume")
    if (run_dir / "DONE").exists():
        raise WbcnetError(f"{run_dir}: this run finished already; nothing to resume")
    for name in needs:
        if not (run_dir / name).exists():
            raise WbcnetError(f"{run_dir}: cannot resume, {name} is missing (the run stopped before its first "
                              f"checkpoint, or files were removed); start a new run instead")
    return run_dir


def mark_done(run_dir: Path) -> None:
    """The run finished: a resume refuses it from now on."""
    (Path(run_dir) / "DONE").write_text(json.dumps({"finished": datetime.now().isoformat(timespec="seconds")}))


def discard_unstarted(run_dir: Path, checkpoint: str, preliminary: set[str] | None = None) -> bool:
    """Remove `run_dir` if its run never wrote `checkpoint` (and, given `preliminary`, holds nothing
    else): a failed start leaves no half-made folder. Returns whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / checkpoint).exists():
        return False
    if preliminary is not None and not {p.name for p in run_dir.iterdir()} <= preliminary:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
