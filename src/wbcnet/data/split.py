"""Stratified, grouped, seeded train/val/test splits, and their CSV form."""
from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..core.errors import WbcnetError
from ..core.files import atomic_write
from .scan import Sample, manifest_path, read_manifest

SPLITS = ("train", "val", "test")


def merge_linked_groups(samples: list[Sample], links: list[tuple[str, str]]) -> list[Sample]:
    """Join the groups of linked paths (near-duplicates: one cell photographed twice under two
    field-of-view names), so that a grouped split keeps both copies on one side."""
    parent: dict[str, str] = {}

    def root(g):
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    group_of = {s.path: s.group for s in samples}
    for a, b in links:
        if a in group_of and b in group_of:
            ra, rb = root(group_of[a]), root(group_of[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [Sample(s.path, s.label, root(s.group), s.source) for s in samples]


def grouped_split(samples: list[Sample], val_frac: float, test_frac: float, seed: int) -> dict[str, list[Sample]]:
    """Split so that every group (field of view) lies in exactly one split.

    Groups are stratified by their majority class: within each class, groups are shuffled with
    `seed` and dealt to test, then val, until each holds its fraction of that class's images.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise WbcnetError(f"val_frac={val_frac} and test_frac={test_frac} must be in [0, 1) and sum below 1")
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_group[s.group].append(s)
    stratum: dict[int, list[str]] = defaultdict(list)
    for g in sorted(by_group):
        majority = Counter(s.label for s in by_group[g]).most_common(1)[0][0]
        stratum[majority].append(g)
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for label in sorted(stratum):
        groups = stratum[label]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        total = sum(len(by_group[g]) for g in groups)
        targets = {"test": test_frac * total, "val": val_frac * total}
        filled = {"test": 0, "val": 0}
        for g in groups:
            for split in ("test", "val"):
                if filled[split] < targets[split] and (filled[split] == 0 or filled[split] + len(by_group[g]) / 2 <= targets[split]):
                    assign[g] = split
                    filled[split] += len(by_group[g])
                    break
            else:
                assign[g] = "train"
    out = {k: [] for k in SPLITS}
    for s in samples:
        out[assign[s.group]].append(s)
    return out


def split_by_source(samples: list[Sample], val_frac: float, test_frac: float, seed: int) -> dict[str, list[Sample]]:
    """`grouped_split` within each source, so every lab has its share in every split."""
    out = {k: [] for k in SPLITS}
    for source in sorted({s.source for s in samples}):
        part = grouped_split([s for s in samples if s.source == source], val_frac, test_frac, seed)
        for k in SPLITS:
            out[k].extend(part[k])
    return out


def write_split(path, split: dict[str, list[Sample]], classes: list[str]) -> None:
    """split.csv, a manifest with a split column. Paths are written relative to its own folder,
    so it can be evaluated from any working directory (`wbcnet evaluate --data RUN/split.csv`)."""
    path = Path(path)
    here = os.path.abspath(path.parent)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "split", "source"])
        for name in SPLITS:
            for s in split.get(name, []):
                w.writerow([os.path.relpath(os.path.abspath(s.path), here), classes[s.label], s.group, name, s.source])


def read_split(path, classes: list[str]) -> dict[str, list[Sample]]:
    path = Path(path)
    index = {c: i for i, c in enumerate(classes)}
    out = {k: [] for k in SPLITS}
    for r in read_manifest(path):
        if r["label"] not in index:
            raise WbcnetError(f"{path}: the run's class '{r['label']}' is not among the classes of its data now "
                              f"({', '.join(classes)}); was a class folder removed or renamed?")
        out[r["split"]].append(Sample(str(manifest_path(path, r["path"])), index[r["label"]], r["group"],
                                      r.get("source") or ""))
    return out
