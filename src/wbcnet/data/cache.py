"""Decode every image once, at the training size, into a uint8 array N x 3 x S x S.

The array lives in memory, or memory-mapped in a cache folder under a key made of the paths,
their mtimes and sizes, and the resize settings, so a second run (or a resumed one) starts at once
and epochs never decode a JPEG again.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

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
    """`decode_images`, memoised on disk when `cache_dir` is given (memory-mapped on reuse)."""
    if cache_dir is None:
        return decode_images(paths, size, workers, desc, progress)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    arr_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if arr_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return DecodedImages(np.load(arr_path, mmap_mode="r"), np.asarray(meta["index"], dtype=np.int64),
                             [tuple(e) for e in meta["errors"]])
    decoded = decode_images(paths, size, workers, desc, progress)
    tmp = arr_path.with_suffix(".tmp.npy")
    np.save(tmp, decoded.images)
    os.replace(tmp, arr_path)
    tmp_meta = meta_path.with_suffix(".tmp")
    tmp_meta.write_text(json.dumps({"size": size, "n_paths": len(paths), "index": decoded.index.tolist(),
                                    "errors": decoded.errors}))
    os.replace(tmp_meta, meta_path)
    return decoded
