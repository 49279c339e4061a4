"""The server's data folder (`wbcnet serve --data-dir`): what a lab uploaded and labelled.

    DATA/labs/LAB/uploads/0001.jpg   pictures as they were sent, named by the server (uploads.json
                                     keeps each one's id, the client's file name and its size)
    DATA/labs/LAB/rounds/K/          one round of suggestions: suggest.csv and cells/, as lab.suggest
                                     writes them
    DATA/labs/LAB/labels.csv         the lab's label sheet: every round's rows, paths relative to the
                                     sheet, labels filled in by the page (or by hand: the same sheet)
    DATA/labs/LAB/fields.json        the fields a person corrected for the finder (finderapi.py): per
                                     upload id, its points (x, y in the field's pixels, kind wbc or
                                     not) and when it was saved; a saved field is fully labelled
    DATA/models/, DATA/jobs.json     the adapted models (registry.py) and the jobs (jobs.py)
    DATA/tmp/                        uploads on their way in (the same disk as the labs: a rename)

The folder is made when something is first stored in it (make_data_folder(), by an upload: every
other thing stored belongs to a lab), so a server that only classifies and counts leaves none
behind; a folder named with --data-dir is made at start, where the user said.

A client's strings are never joined into a path: a lab, a model or a cell is named by an id that
check_id accepts (lowercase letters, digits and '-', up to 40), and the file behind a cell is read
from the sheet and checked to lie inside its lab's folder. Every file is replaced in one step
(files.atomic_write), so a restart, or a reader at the wrong moment, never sees half a sheet.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..core.errors import WbcnetError
from ..core.files import atomic_write, write_text_atomic
from ..core.imageio import ImageReadError, image_info

ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
# The sheet's label for a suggested picture that is no white cell (or too poor to say): kept, so the
# cell is not offered again, but never given to adapt.
SKIP = "skip"
# What each picture format is stored as: the server's name for an upload comes from its content.
SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp", "GIF": ".gif"}


class Refused(WbcnetError):
    """A request the data folder can't do, in one line; `status` is its HTTP status."""
    status = 422


class NotFound(Refused):
    status = 404


class Conflict(Refused):
    status = 409


class Unavailable(Refused):
    status = 503


class Broken(Refused):
    """A file of the data folder edited past reading: said in one line, not a traceback."""
    status = 500


# The data folder's parts, made together the first time something is stored.
LAYOUT = ("labs", "models", "tmp")


def make_data_folder(root: Path) -> Path:
    """The data folder with its parts (LAYOUT), made if they are not there yet; cheap to call again."""
    for part in LAYOUT:
        (root / part).mkdir(parents=True, exist_ok=True)
    return root


def check_data_folder(root: Path) -> Path:
    """Refuse, in one line and before anyone uploads, a data folder that could not be made or
    written to when the first thing is stored; makes nothing."""
    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise WbcnetError(f"{root}: is a file, not a folder; give a folder as the data folder (--data-dir)")
        where = root
    else:
        where = next((p for p in root.absolute().parents if p.exists()), Path("/"))
        if not where.is_dir():
            raise WbcnetError(f"{root}: cannot make the data folder (--data-dir) there: {where} is a file")
    if not os.access(where, os.W_OK | os.X_OK):
        raise WbcnetError(f"{root}: cannot write the data folder (--data-dir) there ({where} is not writable)")
    return root


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise Refused(f"{what} {value!r}: use 1-40 lowercase letters, digits and '-', starting with a letter or "
                      f"digit")
    return value


@dataclass
class Upload:
    id: str          # also the stored file's stem
    name: str        # the client's file name, for showing only
    file: str        # the stored file's name, in uploads/
    width: int
    height: int
    round: int | None = None   # the suggestion round that looked at it; None: not yet


# A point a person put on a field for the finder: a white cell (`wbc`), or a find that is none (`not`).
POINT_KINDS = ("wbc", "not")


def field_size(path: Path) -> tuple[int, int]:
    """(width, height) of a picture as load_rgb turns it (EXIF orientation applied), from its
    header alone: the frame a field's points are in."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # the orientations that swap the sides
    return (h, w) if turned else (w, h)


def is_field(width: int, height: int) -> bool:
    """A whole field rather than a single cell, by lab.suggest's rule for `kind=auto`."""
    from ..inference.lab_cells import FIELD_ASPECT, FIELD_MIN_SIDE

    return max(width, height) >= FIELD_ASPECT * min(width, height) or min(width, height) >= FIELD_MIN_SIDE


@dataclass
class SheetRow:
    """One row of a label sheet, in lab.suggest's columns (a CSV keeps every value as text)."""
    path: str
    label: str = ""
    rank: str = ""
    predicted: str = ""
    confidence: str = ""
    reason: str = ""

    @property
    def round(self) -> int | None:
        parts = Path(self.path).parts
        return int(parts[1]) if len(parts) > 2 and parts[0] == "rounds" and parts[1].isdigit() else None

    def cell_id(self, index: int) -> str:
        """rounds/3/cells/0007.png -> "3-0007"; a row of another shape is known by its place."""
        stem = re.sub(r"[^a-z0-9]+", "-", Path(self.path).stem.lower()).strip("-")
        cid = f"{self.round}-{stem}" if self.round is not None and stem else f"row-{index + 1}"
        return cid if ID.fullmatch(cid) else f"row-{index + 1}"


HEADER = [f.name for f in fields(SheetRow)]


@dataclass
class Cell:
    """A suggested cell as the API shows it: its sheet row, its id and its lab."""
    id: str
    row: SheetRow


class LabStore:
    """The labs under DATA/labs. One lock over all of them: every change is a small file rewritten,
    and two requests (or a request and a finishing job) must not interleave their read and write."""

    def __init__(self, root: Path, classes: list[str]):
        self.root = root / "labs"  # made by the first upload (make_data_folder)
        self.classes = list(classes)
        self._lock = threading.RLock()
        self._reserved: dict[str, set[str]] = {}  # uploads a queued or running suggestion job has taken

    def folder(self, lab: str) -> Path:
        return self.root / check_id(lab, "lab")

    def labs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and ID.fullmatch(p.name))

    def existing(self, lab: str) -> Path:
        folder = self.folder(lab)
        if not folder.is_dir():
            raise NotFound(f"no lab {lab!r} here yet; upload pictures to it first")
        return folder

    # --- uploads -----------------------------------------------------------------------------------

    def uploads(self, lab: str) -> list[Upload]:
        index = self.folder(lab) / "uploads.json"
        if not index.exists():
            return []
        return [Upload(**u) for u in json.loads(index.read_text(encoding="utf-8"))]

    def _write_uploads(self, lab: str, uploads: list[Upload]) -> None:
        write_text_atomic(self.folder(lab) / "uploads.json", json.dumps([asdict(u) for u in uploads], indent=1))

    def add_uploads(self, lab: str, files: list[tuple[str, Path]]) -> tuple[list[Upload], list[tuple[str, str]]]:
        """Keep each (client's name, temporary file) that is a picture; (kept, [(name, why not)])."""
        kept, refused = [], []
        with self._lock:
            folder = self.folder(lab) / "uploads"
            folder.mkdir(parents=True, exist_ok=True)
            uploads = self.uploads(lab)
            number = max((int(u.id) for u in uploads if u.id.isdigit()), default=0)
            for name, tmp in files:
                try:
                    width, height, _, fmt = image_info(tmp)
                except ImageReadError as e:
                    refused.append((name, e.reason))
                    continue
                if fmt not in SUFFIX:
                    refused.append((name, f"{fmt} pictures are not taken (JPEG, PNG, TIFF, BMP, WebP, GIF)"))
                    continue
                number += 1
                up = Upload(f"{number:04d}", name, f"{number:04d}{SUFFIX[fmt]}", width, height)
                tmp.replace(folder / up.file)
                uploads.append(up)
                kept.append(up)
            if kept:
                self._write_uploads(lab, uploads)
        return kept, refused

    def upload_path(self, lab: str, up: Upload) -> Path:
        return self.folder(lab) / "uploads" / up.file

    def upload(self, lab: str, upload_id: str) -> Upload:
        """One of the lab's pictures by its id (404 if there is none)."""
        check_id(upload_id, "field")
        self.existing(lab)
        found = next((u for u in self.uploads(lab) if u.id == upload_id), None)
        if found is None:
            raise NotFound(f"lab {lab!r} has no picture {upload_id!r} (GET /v1/labs/{lab}/fields lists its fields)")
        return found

    def new_uploads(self, lab: str) -> list[Upload]:
        """Uploads no suggestion round has looked at, nor is looking at now."""
        taken = self._reserved.get(lab, set())
        return [u for u in self.uploads(lab) if u.round is None and u.id not in taken]

    def reserve(self, lab: str) -> list[Upload]:
        """Take the new uploads for a suggestion job (given back by release())."""
        with self._lock:
            new = self.new_uploads(lab)
            if not new:
                raise Conflict(f"lab {lab!r} has no pictures that were not looked at already; upload more first")
            self._reserved.setdefault(lab, set()).update(u.id for u in new)
            return new

    def release(self, lab: str, ids: list[str]) -> None:
        with self._lock:
            self._reserved.get(lab, set()).difference_update(ids)

    # --- suggestion rounds and the sheet ------------------------------------------------------------

    def new_round(self, lab: str) -> tuple[int, Path]:
        """The next round's number and its (new, empty) folder. A folder left by a round that never
        finished (a restart) is skipped, not reused: its cells are not in the sheet."""
        with self._lock:
            rounds = self.folder(lab) / "rounds"
            rounds.mkdir(parents=True, exist_ok=True)
            k = 1 + max((int(p.name) for p in rounds.iterdir() if p.name.isdigit()), default=0)
            (rounds / str(k)).mkdir()
            return k, rounds / str(k)

    def add_round(self, lab: str, k: int, sheet: Path, ids: list[str]) -> int:
        """Add a finished round's suggest.csv to the lab's sheet and mark its uploads as looked at;
        returns the number of cells it suggested."""
        rows = read_sheet(sheet)
        base = sheet.parent.resolve()
        for r in rows:
            p = (base / r.path).resolve()
            if not p.is_relative_to(base):
                raise WbcnetError(f"{sheet}: a cell path leaves the round's folder ({r.path})")
            r.path = (Path("rounds") / str(k) / p.relative_to(base)).as_posix()
        with self._lock:
            self._write_sheet(lab, self.sheet(lab) + rows)
            uploads = self.uploads(lab)
            for u in uploads:
                if u.id in ids:
                    u.round = k
            self._write_uploads(lab, uploads)
        return len(rows)

    def sheet(self, lab: str) -> list[SheetRow]:
        path = self.folder(lab) / "labels.csv"
        return read_sheet(path) if path.exists() else []

    def _write_sheet(self, lab: str, rows: list[SheetRow]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows([[getattr(r, h) for h in HEADER] for r in rows])
        write_text_atomic(self.folder(lab) / "labels.csv", buf.getvalue())

    def cells(self, lab: str) -> list[Cell]:
        return [Cell(r.cell_id(i), r) for i, r in enumerate(self.sheet(lab))]

    def cell(self, lab: str, cell_id: str) -> Cell:
        check_id(cell_id, "cell")
        found = next((c for c in self.cells(lab) if c.id == cell_id), None)
        if found is None:
            raise NotFound(f"lab {lab!r} has no cell {cell_id!r}")
        return found

    def set_label(self, lab: str, cell_id: str, label: str | None) -> Cell:
        """Label one cell: a class, SKIP, or None/"" to take its label away. Written at once."""
        label = (label or "").strip()
        if label and label != SKIP and label not in self.classes:
            raise Refused(f"label {label!r}: not one of {', '.join(self.classes)} or {SKIP!r}")
        with self._lock:
            self.existing(lab)
            cells = self.cells(lab)
            found = next((c for c in cells if c.id == check_id(cell_id, "cell")), None)
            if found is None:
                raise NotFound(f"lab {lab!r} has no cell {cell_id!r}")
            found.row.label = label
            self._write_sheet(lab, [c.row for c in cells])
        return found

    def picture(self, lab: str, cell_id: str) -> Path:
        """The file of a cell's picture, which must lie inside the lab's folder (the sheet is a file
        a person may edit)."""
        folder = self.existing(lab).resolve()
        path = (folder / self.cell(lab, cell_id).row.path).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise NotFound(f"lab {lab!r}: the picture of cell {cell_id!r} is not there")
        return path

    def write_manifest(self, lab: str, out: Path) -> int:
        """The lab's cells with a class (not skipped, not empty) as a path,label manifest, paths
        absolute, for adapt; returns how many."""
        folder = self.existing(lab).resolve()
        rows = [r for r in self.sheet(lab) if r.label and r.label != SKIP]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label"])
        w.writerows([[str((folder / r.path).resolve()), r.label] for r in rows])
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out) as tmp:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
        return len(rows)

    # --- fields corrected for the finder ---------------------------------------------------------------

    def corrections(self, lab: str) -> dict[str, dict]:
        """upload id -> {"points": [{"x", "y", "kind"}], "saved": time}: the fields saved as corrected."""
        path = self.folder(lab) / "fields.json"
        if not path.exists():
            return {}
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or not all(isinstance(v.get("points"), list) for v in saved.values()):
                raise ValueError("not an object of fields with their points")
        except (ValueError, AttributeError) as e:
            raise Broken(f"lab {lab!r}: its fields.json is not a fields file wbcnet can read ({e}); move it away "
                         f"to start the lab's corrections afresh") from None
        return saved

    def set_points(self, lab: str, upload_id: str, points: list[tuple[float, float, str]], saved: str) -> dict:
        """Save a field as corrected, with all its points (replacing what was saved before)."""
        with self._lock:
            self.upload(lab, upload_id)
            fields_saved = self.corrections(lab)
            entry = {"points": [{"x": x, "y": y, "kind": k} for x, y, k in points], "saved": saved}
            fields_saved[upload_id] = entry
            write_text_atomic(self.folder(lab) / "fields.json", json.dumps(fields_saved, indent=1))
        return entry

    def points_csv(self, lab: str) -> tuple[str, int, int, int]:
        """The corrected fields as finder.adapt reads them (`file,x,y,kind`, file: the stored
        picture's name in uploads/), and (fields, wbc points, not points). A field saved with no
        point at all is one row with empty x and y: "checked, no white cell here"."""
        stored = {u.id: u.file for u in self.uploads(lab)}
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "x", "y", "kind"])
        n_fields = n_wbc = n_not = 0
        for upload_id, entry in sorted(self.corrections(lab).items()):
            if upload_id not in stored:
                continue
            n_fields += 1
            if not entry["points"]:
                w.writerow([stored[upload_id], "", "", "none"])
            for p in entry["points"]:
                w.writerow([stored[upload_id], f"{float(p['x']):.1f}", f"{float(p['y']):.1f}", p["kind"]])
                n_wbc += p["kind"] == "wbc"
                n_not += p["kind"] == "not"
        return buf.getvalue(), n_fields, n_wbc, n_not

    def counts(self, lab: str) -> dict[str, int]:
        """Labelled cells per class, and SKIP, in the model's class order."""
        rows = self.sheet(lab)
        return {c: sum(r.label == c for r in rows) for c in [*self.classes, SKIP]}


def read_sheet(path: Path) -> list[SheetRow]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if "path" not in (reader.fieldnames or []):
            raise WbcnetError(f"{path}: not a label sheet (no 'path' column)")
        return [SheetRow(**{h: (r.get(h) or "").strip() for h in HEADER}) for r in reader]
