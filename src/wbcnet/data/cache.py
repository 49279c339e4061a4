"""Decode every image once, at the training size, into a uint8 array N x 3 x S x S.

The array lives in memory, or memory-mapped in a cache folder under a key made of the paths,
their mtimes and sizes, and the resize settings, so a second run (or a resumed one) starts at once
and epochs never decode a JPEG again.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..cells.preprocess import Preprocess, load_inputs
from ..core.files import atomic_write, write_text_atomic
from ..core.imageio import ImageReadError

CACHE_VERSION = 2  # bump when load_rgb's resizing or the cell crop changes
# Pillow's decode and resize release the GIL, so threads share the cores well for whole pictures;
# the threshold finder's many small numpy steps hold it, so with crop="cell" and finder="classic"
# forked processes decode faster once there are enough images to pay for starting them: 1,000
# Raabin cells with the cell crop, 2 workers, 445-503 img/s with threads, 955-981 with processes.
# The learned finder is torch, which lets go of the GIL, and torch in a process forked from one
# whose OpenMP threads had run hangs (wbcnet evaluate did, at 0% CPU): it decodes in threads.
# WBCNET_DECODE=threads keeps threads for the classic finder too.
_PROCESSES_FROM = 256
# Each thread (or process) is handed this many paths at a time, so the learned finder runs on a
# batch of them (cells/preprocess.load_inputs): its forward pass is 1.2 ms a 575 px picture in
# batches of 32 against 2.9 one at a time, one thread, and a 575 px Raabin-WBC picture's input ~4.5
# ms against ~8. Chunks are evened out so that the last is not a lone picture.
CHUNK = 32


@dataclass
class DecodedImages:
    images: np.ndarray                 # (N, 3, S, S) uint8, one row per readable input path
    index: np.ndarray                  # (N,) position of each row in the input path list
    errors: list[tuple[str, str]]      # (path, reason) for every unreadable file, once each
    found: np.ndarray | None = None    # (N,) bool: the cell was found (always True without a crop)

    def __post_init__(self):
        if self.found is None:
            self.found = np.ones(len(self.index), dtype=bool)

    def errors_by_position(self, n_inputs: int) -> dict[int, str]:
        """Input position -> reason, for each of the `n_inputs` paths that could not be read."""
        failed = sorted(set(range(n_inputs)) - set(self.index.tolist()))
        return {i: reason for i, (_, reason) in zip(failed, self.errors)}  # both in input order


def as_preprocess(prep: Preprocess | int) -> Preprocess:
    return prep if isinstance(prep, Preprocess) else Preprocess(size=int(prep))


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _decode_chunk(args):
    paths, prep = args
    return [(None, False, made.reason) if isinstance(made, ImageReadError)
            else (made[0].transpose(2, 0, 1), made[1], None) for made in load_inputs(paths, prep)]


def chunks(n: int, workers: int, most: int = CHUNK) -> list[range]:
    """Positions 0..n-1 in consecutive chunks of at most `most`, as even as they can be, and at
    least one for each worker while there are pictures enough."""
    k = max(-(-n // most), min(workers, n))
    return [range(n * j // k, n * (j + 1) // k) for j in range(k)] if n else []


def decode_images(paths: list[str], prep: Preprocess | int, workers: int | None = None, desc: str = "decoding",
                  progress: bool = True) -> DecodedImages:
    """Decode (and crop, as `prep` says) in parallel threads; Pillow, numpy and scipy release the
    GIL for most of the work. `prep` may be a plain size: the whole picture, resized."""
    prep = as_preprocess(prep)
    workers = workers or default_workers()
    size = prep.size
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    found = np.zeros(len(paths), dtype=bool)
    errors = []
    with _pool(workers, len(paths), prep) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        try:
            parts = chunks(len(paths), workers)
            futures = [pool.submit(_decode_chunk, ([paths[i] for i in part], prep)) for part in parts]
            for part, fut in zip(parts, futures):
                for i, (arr, cell, err) in zip(part, _result(fut)):
                    if err is None:
                        out[i] = arr
                        ok[i], found[i] = True, cell
                    else:
                        errors.append((paths[i], err))
                bar.update(len(part))
        except BaseException:
            # Ctrl-C (or any error): drop the queued pictures, so that leaving `with` waits only for
            # those in flight; it decoded every queued one first (7-22 s on 2,400 pictures).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    index = np.flatnonzero(ok)
    images = out if ok.all() else out[index]
    return DecodedImages(images, index, errors, found[index])


def _result(fut):
    """A future's result, waited for in short steps. Ctrl-C reaches a process through whichever of
    its threads the kernel picks; Python runs the handler in the main thread only when that thread
    wakes, and a plain wait for one picture's result slept on past the test's limit (a loaded
    machine, decoding with the learned finder). Each step's timeout wakes it."""
    while True:
        try:
            return fut.result(timeout=0.2)
        except FutureTimeout:
            continue


def _pool(workers: int, n: int, prep: Preprocess):
    if (workers > 1 and n >= _PROCESSES_FROM and prep.crop == "cell" and prep.finder == "classic"
            and os.environ.get("WBCNET_DECODE") != "threads" and "fork" in multiprocessing.get_all_start_methods()):
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def cache_key(paths: list[str], prep: Preprocess) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION} {prep.key()}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\t{st.st_mtime_ns}\t{st.st_size}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\tmissing\n".encode())
    return h.hexdigest()[:20]


def cached_decode(paths: list[str], prep: Preprocess | int, cache_dir=None, workers: int | None = None,
                  desc: str = "decoding", progress: bool = True) -> DecodedImages:
    """`decode_images`, memoised on disk when `cache_dir` is given (memory-mapped on reuse).

    A cache entry that can't be read back (cut short, overwritten, from another numpy) is named
    on stderr, decoded again and replaced. A cache folder that can't be written to is named on
    stderr and the images are decoded into memory instead."""
    prep = as_preprocess(prep)
    size = prep.size
    if cache_dir is None:
        return decode_images(paths, prep, workers, desc, progress)
    cache_dir = Path(cache_dir)
    key = cache_key(paths, prep)
    arr_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if arr_path.exists() and meta_path.exists():
        try:
            return _read_entry(arr_path, meta_path, len(paths), size)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"warning: decode cache entry {arr_path} is unreadable ({e}); decoding again", file=sys.stderr)
    decoded = decode_images(paths, prep, workers, desc, progress)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(arr_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, decoded.images)
        # The JSON goes last: an entry counts only once both files are whole.
        write_text_atomic(meta_path, json.dumps({"size": size, "n_paths": len(paths), "index": decoded.index.tolist(),
                                                 "errors": decoded.errors, "found": decoded.found.tolist()}))
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
    return DecodedImages(images, index, [tuple(e) for e in meta["errors"]], np.asarray(meta["found"], dtype=bool))
