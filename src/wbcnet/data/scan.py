"""Find the samples of a dataset: an ImageFolder (one folder per class) or a CSV manifest.

A sample is (path, label, group, source). `label` indexes `classes`; `group` is the field of view
the cell came from, so that splits never put two cells of one field on both sides; `source`
names the data set (lab) it came from.
"""
from __future__ import annotations

import csv
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import WbcnetError
from ..core.imageio import IMAGE_EXTENSIONS, is_candidate

# The label a suggestion sheet gives a cell a person skipped (not a white cell, can't tell).
SKIP = "skip"


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    group: str
    source: str = ""


@dataclass
class ScanResult:
    samples: list[Sample]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    missing_classes: list[str] = field(default_factory=list)     # asked for, no folder or no images
    unknown_folders: list[str] = field(default_factory=list)     # folders that match no class

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for s in self.samples:
            out[self.classes[s.label]] += 1
        return out


def default_group(path: str | Path) -> str:
    """Field of view of a Raabin-style name: '95-5-10-1_1001_3.jpg' -> '95-5-10-1_1001'."""
    stem = Path(path).stem
    return re.sub(r"_\d+$", "", stem) or stem


def walk_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every file under `folder`, searched recursively, in sorted order; and (path, reason) for the
    entries that are no file and would otherwise vanish without a word: symlink loops, broken
    symlinks and symlinks to folders (not followed, so that no folder is read twice or forever)."""
    files, odd = [], []
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            files.append(p)
        elif p.is_symlink():
            odd.append((str(p), _link_problem(p)))
    return files, odd


def _link_problem(link: Path) -> str:
    try:
        target = link.resolve(strict=True)
    except RuntimeError:  # Python before 3.13 says "Symlink loop from ..." this way
        return "symlink loop, skipped"
    except OSError as e:
        return "symlink loop, skipped" if e.errno == errno.ELOOP else "broken symlink (no file at its target), skipped"
    if target.is_dir():
        if link.parent.resolve() == target or target in link.parent.resolve().parents:
            return "symlink loop (it points to a folder above it), skipped"
        return "symlink to a folder, not followed"
    return "not a regular file, skipped"


def _canonical_index(names: list[str], classes: list[str]) -> dict[str, int]:
    lower = {c.lower(): i for i, c in enumerate(classes)}
    return {n: lower[n.lower()] for n in names if n.lower() in lower}


def scan_folder(root, classes: list[str] | None = None, source: str = "") -> ScanResult:
    """Scan an ImageFolder. With `classes` (a checkpoint's), folders are matched case-insensitively
    and folders of other names are reported in `unknown_folders`, not loaded."""
    root = Path(root)
    if not root.is_dir():
        raise WbcnetError(f"{root}: not a folder" if root.exists() else f"{root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise WbcnetError(f"{root}: no class folders inside (expected one folder per class)")
    if classes is None:
        seen: dict[str, str] = {}
        for f in folders:
            if f.name.lower() in seen:
                raise WbcnetError(f"{root}: class folders '{seen[f.name.lower()]}' and '{f.name}' differ only in case")
            seen[f.name.lower()] = f.name
        classes = [f.name for f in folders]
    index = _canonical_index([f.name for f in folders], classes)
    result = ScanResult(samples=[], classes=list(classes))
    result.unknown_folders = [str(f) for f in folders if f.name not in index]
    for f in folders:
        if f.name not in index:
            continue
        files, odd = walk_files(f)
        result.skipped.extend(odd)
        for p in files:
            if is_candidate(p):
                result.samples.append(Sample(str(p), index[f.name], default_group(p), source))
            elif p.name.startswith("."):
                result.skipped.append((str(p), "hidden file, skipped"))
            else:
                result.skipped.append((str(p), f"not an image extension ({p.suffix or 'none'}), skipped"))
    present = {s.label for s in result.samples}
    result.missing_classes = [c for i, c in enumerate(classes) if i not in present]
    return result


def read_manifest(manifest) -> list[dict]:
    """The rows of a CSV manifest, checked: a header with path and label, at least one row, and
    a path and a label in every row (in a suggestion sheet, rows without a label are skipped). A UTF-8 byte-order mark (Excel writes one) is ignored."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = list(reader)
    except UnicodeDecodeError:
        raise WbcnetError(f"{manifest}: not a UTF-8 text CSV") from None
    except csv.Error as e:
        raise WbcnetError(f"{manifest}: not a readable CSV ({e})") from None
    if not {"path", "label"} <= set(header):
        raise WbcnetError(f"{manifest}: a manifest needs a header with 'path' and 'label' columns "
                          f"(found: {', '.join(header) or 'nothing'})")
    if not rows:
        raise WbcnetError(f"{manifest}: no rows under the header")
    if "rank" in header:  # a suggestion sheet (lab.suggest, the page): unlabelled and skipped cells are left out
        rows = [r for r in rows if (r.get("label") or "").strip().lower() not in ("", SKIP)]
        if not rows:
            raise WbcnetError(f"{manifest}: no cell has a label yet (fill in the label column)")
    for line, r in enumerate(rows, start=2):
        if not (r.get("path") or "").strip():
            raise WbcnetError(f"{manifest}, line {line}: no path")
        if not (r.get("label") or "").strip():
            raise WbcnetError(f"{manifest}, line {line}: no label for {r['path'].strip()}")
    return rows


def scan_csv(manifest, classes: list[str] | None = None, split: str | None = None, source: str = "") -> ScanResult:
    """Scan a CSV with columns path,label[,group[,split[,source]]]; relative paths are relative to
    the CSV's folder (a run's split.csv writes them so). With `split`, only the rows of that split
    (a run's split.csv: train, val or test). A `source` that the CSV's source column names keeps
    only that source's rows (one lab of a multi-lab run's split.csv)."""
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if source and "source" in rows[0] and source in {r["source"] for r in rows}:
        rows = [r for r in rows if r["source"] == source]
    if split is not None:
        if "split" not in rows[0]:
            raise WbcnetError(f"{manifest}: no 'split' column to choose '{split}' from")
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise WbcnetError(f"{manifest}: no rows of split '{split}'")
    names = sorted({r["label"].strip() for r in rows}, key=str.lower)
    if classes is None:
        classes = []
        for n in names:
            if n.lower() not in {c.lower() for c in classes}:
                classes.append(n)
    index = _canonical_index(names, classes)
    result = ScanResult(samples=[], classes=list(classes))
    unknown = set()
    for r in rows:
        label = r["label"].strip()
        p = manifest_path(manifest, r["path"].strip())
        if label not in index:
            unknown.add(label)
            continue
        if not is_candidate(p):
            result.skipped.append((str(p), "not an image extension or hidden, skipped"))
            continue
        group = (r.get("group") or "").strip() or default_group(p)
        result.samples.append(Sample(str(p), index[label], group, (r.get("source") or "").strip() or source))
    result.unknown_folders = sorted(unknown)
    present = {s.label for s in result.samples}
    result.missing_classes = [c for i, c in enumerate(classes) if i not in present]
    return result


def manifest_path(manifest: Path, path: str) -> Path:
    """A manifest's path as written: absolute, or relative to the manifest's folder (only that)."""
    p = Path(path)
    return p if p.is_absolute() else Path(os.path.normpath(manifest.parent / p))


def scan(path, classes: list[str] | None = None, split: str | None = None, source: str = "") -> ScanResult:
    """An ImageFolder directory or a .csv manifest (`split` selects rows of a run's split.csv);
    samples are tagged with `source`, the data set's name."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise WbcnetError(f"{path}: no such manifest")
        return scan_csv(path, classes, split, source)
    if split is not None:
        raise WbcnetError(f"{path}: --split needs a CSV manifest with a split column (a run's split.csv)")
    return scan_folder(path, classes, source)


__all__ = ["Sample", "ScanResult", "scan", "scan_folder", "scan_csv", "default_group", "walk_files", "IMAGE_EXTENSIONS"]
