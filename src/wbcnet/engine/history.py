"""A run's history: one row per epoch, written whole (atomically) after every epoch."""
from __future__ import annotations

import csv
from pathlib import Path

from ..core.files import atomic_write


def write_history(path: Path, history: list[dict], fields: list[str]) -> None:
    """`history`'s rows as a CSV of `fields` at `path`."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(history)
