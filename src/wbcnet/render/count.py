"""A count's folder: cells.csv, differential.csv/.json, truth.json, fields/, count.html, count.json.

The outputs appear together. While the count runs, everything goes into a hidden folder beside
OUT, `.OUT.unfinished-PID` (the drawn fields as each is classified: count.run_count calls
`CountOutput.add_field`, so each field is decoded once, to be searched, and drawn from that same
picture). `finish` writes the tables and the page there and renames the folder onto the empty
OUT in one step. Where that can't be done (OUT's parent is not writable, OUT is a mount point)
the folder is OUT/.unfinished and its files are moved out one by one, count.json last. Either way
a folder with a count.json is a finished count, and a count that is killed leaves OUT empty and
the hidden folder behind. A write that fails (a full disk, a folder made read-only meanwhile) is
one WbcnetError line, and the unfinished folder is removed.

    with CountOutput(out, meta.classes) as output:
        result = run_count(model, meta, paths, on_field=output.add_field)
        output.finish(result)
"""
from __future__ import annotations

import errno
import glob
import heapq
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..core.errors import WbcnetError
from ..core.files import write_text_atomic
from ..core.results import Candidate, CellResult, CountResult, Differential, FieldResult
from .count_report import FIELDS_SHOWN, GALLERY_PER_CLASS, GALLERY_REFERRED, render_count_report
from .draw import class_colours, draw_field
from .tables import write_csv, write_json

# Errors of writing, not of wbcnet: said in one line.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def write_cells_csv(path, result: CountResult) -> Path:
    """cells.csv: one row per cell, plus one per unreadable field. `flag`: edge (cut by the field's
    edge, not counted), refer (unfamiliar or below the confidence bar), unreadable: <reason>."""
    classes = result.classes
    cells = result.cells
    shift = any(c.unfamiliar is not None for c in cells)
    unreadable = [CellResult(f.file, error=f.error) for f in result.fields if f.error]
    return write_csv(path, CellResult.columns("count", classes, shift),
                     (c.to_row(classes, "count") for c in unreadable + cells))


def write_differential(out: Path, diff: Differential) -> None:
    write_csv(out / "differential.csv", Differential.CSV_COLUMNS, diff.to_rows())
    write_json(out / "differential.json", diff.to_dict())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class CountOutput:
    """Collects what `wbcnet count` shows while the count runs, and writes the folder at the end."""

    def __init__(self, out, classes: list[str], draw_fields: bool = True):
        self.out, self.classes, self.draw_fields = Path(out), list(classes), draw_fields
        whole = self.out.resolve()
        self.work = whole.parent / f".{whole.name}.unfinished-{os.getpid()}"
        self._taken: set[str] = set()
        self.shown: list = []  # (file, drawn PIL image) of the first fields with cells
        self._best: dict[str, list] = {c: [] for c in self.classes}  # per class a heap of its most confident cells
        self.referred: list[tuple[CellResult, np.ndarray]] = []
        self.rejected: list[tuple[Candidate, np.ndarray]] = []  # the first candidates judged not white cells
        self._order = 0

    def _clear_leftovers(self) -> None:
        """The unfinished folders of earlier counts into this OUT whose process is gone (killed, or
        the machine went down): nothing in them was ever finished, and nothing else cleans them."""
        whole = self.out.resolve()
        for old in whole.parent.glob(f".{glob.escape(whole.name)}.unfinished-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)

    def __enter__(self) -> "CountOutput":
        self._clear_leftovers()
        with self._writing():
            try:
                self.work.mkdir()
            except OSError:  # OUT's parent is not ours to write in: work inside OUT
                self.work = self.out / ".unfinished"
                shutil.rmtree(self.work, ignore_errors=True)
                self.work.mkdir()
            if self.draw_fields:
                (self.work / "fields").mkdir()
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            if isinstance(error, OSError) and error.errno in _WRITE_ERRORS:
                raise WbcnetError(self._message(error)) from None
        return False

    def _message(self, error: OSError) -> str:
        from ..core.files import _reason

        why = "no space left on the device" if error.errno in (errno.ENOSPC, errno.EDQUOT) else _reason(error)
        return f"{self.out}: cannot write the count ({why}); nothing of it was kept"

    @contextmanager
    def _writing(self):
        """A write that fails for want of room or rights: the unfinished folder goes, one line is said."""
        try:
            yield
        except OSError as e:
            if e.errno not in _WRITE_ERRORS:
                raise
            shutil.rmtree(self.work, ignore_errors=True)
            raise WbcnetError(self._message(e)) from None

    def add_field(self, field: FieldResult, found) -> None:
        """count.run_count's `on_field`: draw the field into fields/ and keep what the page shows."""
        if field.error or found.picture is None:
            return
        for cell, picture in zip(field.cells, found.cell_pictures):
            self._order += 1
            if cell.counted:
                heap = self._best[cell.class_name]
                item = (cell.confidence, -self._order, cell, picture)
                heapq.heappush(heap, item) if len(heap) < GALLERY_PER_CLASS else heapq.heappushpop(heap, item)
            elif cell.refer and not cell.edge and len(self.referred) < GALLERY_REFERRED:
                self.referred.append((cell, picture))
        for cand, picture in zip(field.rejected, found.rejected_pictures):
            if len(self.rejected) < GALLERY_REFERRED:
                self.rejected.append((cand, picture))
        show = field.cells and len(self.shown) < FIELDS_SHOWN
        if not (self.draw_fields or show):
            return
        img = draw_field(found.picture, field.cells, self.classes, found.scale, field.rejected)
        if self.draw_fields:
            # Fields from two folders may share a name; neither picture may replace the other.
            stem, n = Path(field.file).stem, 1
            while (stem if n == 1 else f"{stem}-{n}") in self._taken:
                n += 1
            name = (stem if n == 1 else f"{stem}-{n}")
            self._taken.add(name)
            with self._writing():
                img.save(self.work / "fields" / f"{name}.jpg", quality=88)
            field.picture = f"{name}.jpg"
        if show:
            self.shown.append((field.file, img))

    def gallery(self) -> dict[str, list[tuple[CellResult, np.ndarray]]]:
        """Per class its most confident counted cells, most confident first (ties in input order)."""
        return {c: [(cell, pic) for _, _, cell, pic in sorted(heap, key=lambda t: (-t[0], -t[1]))]
                for c, heap in self._best.items()}

    def finish(self, result: CountResult) -> Path:
        """Write the tables, count.html and count.json, then move them into place; count.json last."""
        from .plots import plot_differential

        with self._writing():
            write_cells_csv(self.work / "cells.csv", result)
            write_differential(self.work, result.differential)
            if result.truth is not None:
                write_json(self.work / "truth.json", result.truth.to_dict())
            chart = plot_differential(result.differential.to_dict(), self.work / "differential.png",
                                      class_colours(self.classes))
            html = render_count_report(result, chart, self.shown, self.gallery(), self.referred, self.rejected)
            write_text_atomic(self.work / "count.html", html)
            write_json(self.work / "count.json", result.summary())
            self._move_into_place()
        return self.out / "count.json"

    def _move_into_place(self) -> None:
        if self.work.parent != self.out.resolve():
            try:
                os.replace(self.work, self.out)  # onto the empty OUT, in one step
                return
            except OSError:  # OUT is a mount point, or another file system
                pass
        for entry in sorted(self.work.iterdir(), key=lambda p: p.name == "count.json"):
            shutil.move(str(entry), str(self.out / entry.name))
        shutil.rmtree(self.work)
