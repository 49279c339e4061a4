"""Named data sources (one per lab), and how their cells are grouped for splitting.

`--data raabin=DIR --data pbc=DIR` trains on several labs at once. Each source is split within
itself, so every lab is represented in train, validation and test, and the evaluation tables can
give one row per lab.

Grouping keeps cells that share a microscope field of view on one side of a split. The default
rule (file name minus its final `_N`) suits Raabin-WBC, but it turns PBC's `BA_202924.jpg` into
the group `BA`: one group per class, which would put whole classes on one side. `group_by`
chooses the rule; "auto" checks the name rule's groups and falls back to one group per image
when they look like labels rather than fields of view.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import WbcnetError
from .scan import Sample, default_group

GROUP_RULES = ("auto", "name", "column", "none")  # or "regex:PATTERN"
# A group holding more than this share of a class's images is not a field of view.
MAX_GROUP_SHARE = 0.2


@dataclass(frozen=True)
class Source:
    name: str
    path: str


def parse_sources(data) -> list[Source]:
    """`data` as a config holds it: one path, a list of "name=path" or paths, or {name: path}."""
    if data is None:
        return []
    if isinstance(data, dict):
        items = [(str(k), str(v)) for k, v in data.items()]
    else:
        items = []
        for entry in [data] if isinstance(data, str) else list(data):
            name, sep, path = str(entry).partition("=")
            # "C:\\x" or a path with '=' in a folder name: only a plain word counts as a name.
            if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                name, path = "", str(entry)
            items.append((name, path))
        if len(items) == 1 and not items[0][0]:
            items = [(source_name(items[0][1]), items[0][1])]
        for name, path in items:
            if not name:
                raise WbcnetError(f"{path}: with several --data sources, name each one: --data NAME=PATH")
    names = [n for n, _ in items]
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise WbcnetError(f"data source name(s) used twice: {', '.join(dup)}")
    return [Source(n, p) for n, p in items]


def source_name(path: str) -> str:
    p = Path(path)
    return (p.stem if p.suffix.lower() == ".csv" else p.name) or "data"


def regroup(samples: list[Sample], group_by: str, where: str) -> tuple[list[Sample], str]:
    """Samples with their groups set by `group_by`; returns them and a line saying what was done."""
    if group_by == "none":
        return [Sample(s.path, s.label, s.path, s.source) for s in samples], "one group per image (--group-by none)"
    if group_by.startswith("regex:"):
        try:
            pattern = re.compile(group_by[len("regex:"):])
        except re.error as e:
            raise WbcnetError(f"--group-by {group_by}: not a valid regular expression ({e})") from None
        out = []
        for s in samples:
            m = pattern.search(Path(s.path).stem)
            if not m:
                raise WbcnetError(f"{s.path}: --group-by {group_by} does not match this file name")
            out.append(Sample(s.path, s.label, m.group(1) if m.groups() else m.group(0), s.source))
        return out, f"groups from the regular expression {pattern.pattern}"
    if group_by == "name":
        return [Sample(s.path, s.label, default_group(s.path), s.source) for s in samples], \
            "groups by field of view (file name minus its final _N)"
    if group_by == "column":
        return samples, "groups from the manifest's group column"
    if group_by != "auto":
        raise WbcnetError(f"--group-by {group_by!r}: use one of {', '.join(GROUP_RULES)} or regex:PATTERN")
    problem = degenerate_grouping(samples)
    if problem:
        return [Sample(s.path, s.label, s.path, s.source) for s in samples], \
            f"warning: {where}: {problem}; these look like labels, not fields of view, so every image is its own " \
            f"group (choose with --group-by)"
    return samples, "groups by field of view (file name minus its final _N, or the manifest's group column)"


def degenerate_grouping(samples: list[Sample]) -> str | None:
    """Why these groups can't be fields of view, or None when they can."""
    by_class: dict[int, Counter] = defaultdict(Counter)
    for s in samples:
        by_class[s.label][s.group] += 1
    for label, groups in sorted(by_class.items()):
        total = sum(groups.values())
        group, biggest = groups.most_common(1)[0]
        if total >= 10 and biggest > MAX_GROUP_SHARE * total:
            return f"group '{group}' holds {biggest} of the {total} images of one class"
        if total >= 3 and len(groups) < 3:
            return f"a class of {total} images has only {len(groups)} group(s)"
    return None
