"""Decode every image once, at the training size, into a uint8 array N x 3 x S x S.

The array lives in memory, or memory-mapped in a cache folder under a key made of the paths,
their mtimes and sizes, and the resize settings, so a second run (or a resumed one) starts at once
and epochs never decode a JPEG again.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import atomic_write, write_text_atomic
from .imageio import ImageReadError, load_rgb

CACHE_VERSION = 1  # bump when load_rgb's resizing changes


@dataclass
class DecodedImages:
    images: np.ndarray                 # (N, 3, S, S) uint8, one row per readable input path
    index: np.ndarray                  # (N,) position of each row in the input path list
    errors: list[tuple[str, str]]      # (path, reason) for every unreadable file, once each


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _decode_one(args):
    path, size = args
    try:
        return load_rgb(path, size).transpose(2, 0, 1), None
    except ImageReadError as e:
        return None, e.reason


def decode_images(paths: list[str], size: int, workers: int | None = None, desc: str = "decoding",
                  progress: bool = True) -> DecodedImages:
    """Decode in parallel threads (Pillow releases the GIL while decoding and resizing)."""
    workers = workers or default_workers()
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    errors = []
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_decode_one, [(p, size) for p in paths], chunksize=16)
        for i, (arr, err) in enumerate(tqdm(results, total=len(paths), desc=desc, unit="img",
                                            disable=not progress, leave=False)):
            if err is None:
                out[i] = arr
                ok[i] = True
            else:
                errors.append((paths[i], err))
    index = np.flatnonzero(ok)
    images = out if ok.all() else out[index]
    return DecodedImages(images, index, errors)


def cache_key(paths: list[str], size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION} size={size}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\t{st.st_mtime_ns}\t{st.st_size}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\tmissing\n".encode())
    return h.hexdigest()[:20]


def cached_decode(paths: list[str], size: int, cache_dir=None, workers: int | None = None,
                  desc: str = "decoding", progress: bool = True) -> DecodedImages:
    """`decode_images`, memoised on disk when `cache_dir` is given (memory-mapped on reuse).

    A cache entry that can't be read back (cut short, overwritten, from another numpy) is named
    on stderr, decoded again and replaced. A cache folder that can't be written to is named on
    stderr and the images are decoded into memory instead."""
    if cache_dir is None:
        return decode_images(paths, size, workers, desc, progress)
    cache_dir = Path(cache_dir)
    key = cache_key(paths, size)
    arr_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if arr_path.exists() and meta_path.exists():
        try:
            return _read_entry(arr_path, meta_path, len(paths), size)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"warning: decode cache entry {arr_path} is unreadable ({e}); decoding again", file=sys.stderr)
    decoded = decode_images(paths, size, workers, desc, progress)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(arr_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, decoded.images)
        # The JSON goes last: an entry counts only once both files are whole.
        write_text_atomic(meta_path, json.dumps({"size": size, "n_paths": len(paths), "index": decoded.index.tolist(),
                                                 "errors": decoded.errors}))
    except OSError as e:
        print(f"warning: cannot write the decode cache in {cache_dir} ({e.strerror or e}); "
              f"keeping the images in memory", file=sys.stderr)
    return decoded


def _read_entry(arr_path: Path, meta_path: Path, n_paths: int, size: int) -> DecodedImages:
    meta = json.loads(meta_path.read_text())
    images = np.load(arr_path, mmap_mode="r")
    index = np.asarray(meta["index"], dtype=np.int64)
    if (meta["n_paths"] != n_paths or meta["size"] != size or images.dtype != np.uint8
            or images.shape != (len(index), 3, size, size)):
        raise ValueError(f"holds {images.shape} {images.dtype}, expected ({len(index)}, 3, {size}, {size}) uint8")
    return DecodedImages(images, index, [tuple(e) for e in meta["errors"]])
