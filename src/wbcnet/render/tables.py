"""CSV and JSON files, each written under a temporary name and renamed (files.atomic_write)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

from ..core.files import atomic_write, write_text_atomic


def write_csv(path, columns: list[str], rows: Iterable) -> Path:
    """Rows as dicts (missing keys are empty cells) or as lists in `columns` order."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        plain = csv.writer(fh)
        named = csv.DictWriter(fh, fieldnames=columns, restval="")
        plain.writerow(columns)
        for row in rows:
            named.writerow(row) if isinstance(row, dict) else plain.writerow(row)
    return path


def write_json(path, data, indent: int = 2, newline: bool = True) -> Path:
    path = Path(path)
    write_text_atomic(path, json.dumps(data, indent=indent) + ("\n" if newline else ""))
    return path
