"""wbcnet count on BCCD's whole fields: detection at three magnifications, and speed.

    python -m benchmarks.count_fields [--fields ../shared/datasets/bccd-fields] [--out benchmarks/results/count.md]

Detection is scored like `wbcnet count --truth` (a found cell matches a hand-drawn box when its
centre lies inside it or IoU >= 0.3, one to one). Lower magnifications are simulated from the
same fields: k x k fields shrunk by 1/k and tiled into one picture of 640 px (more, smaller
cells per field, as a lower-power objective shows) and of 640 * k px (the same at a camera of
k times the resolution). Speed is the whole command (read, find, crop, classify, write
cells.csv and the differential; fields/ drawing and count.html left out), fields per second,
on BCCD's 640x480 fields and on 1440x900 fields (2x2 BCCD fields at 720x450, JPEG quality 90:
the size of the held-back lab's fields), each beside PIL's decode and resize of the same files
to the finder's working size alone, measured in the same run on the same CPU.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import cpu_summary, git_state
from wbcnet.inference.count import match_boxes, read_truth
from wbcnet.cells.locate import find_cells

ROOT = Path(__file__).resolve().parent.parent


def tiled(names, images: Path, truth, k: int, side: int):
    """Pictures of k x k shrunk fields and their true boxes, in order."""
    for s in range(0, len(names) - k * k + 1, k * k):
        w, h = side, side * 3 // 4
        tw, th = w // k, h // k
        canvas = np.zeros((h, w, 3), np.uint8)
        boxes = []
        for j, name in enumerate(names[s:s + k * k]):
            ox, oy = (j % k) * tw, (j // k) * th
            canvas[oy:oy + th, ox:ox + tw] = np.asarray(Image.open(images / name).convert("RGB").resize((tw, th)))
            sx, sy = tw / 640, th / 480
            boxes += [(x0 * sx + ox, y0 * sy + oy, x1 * sx + ox, y1 * sy + oy) for (x0, y0, x1, y1), _ in truth[name]]
        yield canvas, boxes


def detection(names, images, truth, k, side) -> dict:
    true = found = matched = 0
    t0 = time.perf_counter()
    for canvas, boxes in tiled(names, images, truth, k, side):
        cells = [(b.cx - b.radius, b.cy - b.radius, b.cx + b.radius, b.cy + b.radius) for b in find_cells(canvas)]
        true, found, matched = true + len(boxes), found + len(cells), matched + len(match_boxes(cells, boxes))
    return {"recall": matched / true, "precision": matched / max(found, 1), "true": true, "found": found,
            "matched": matched, "s": time.perf_counter() - t0}


def write_big_fields(names, images: Path, folder: Path, n: int) -> list[Path]:
    """n JPEG fields of 1440x900, each 2x2 BCCD fields at 720x450."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        canvas = Image.new("RGB", (1440, 900))
        for j in range(4):
            name = names[(4 * i + j) % len(names)]
            canvas.paste(Image.open(images / name).convert("RGB").resize((720, 450)), ((j % 2) * 720, (j // 2) * 450))
        out.append(folder / f"field_{i:04d}.jpg")
        canvas.save(out[-1], quality=90)
    return out


def decode_reference(paths: list[Path], side: int = 320) -> float:
    """Pictures per second of PIL's decode + resize to the finder's working size, one thread."""
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            img.draft("RGB", (img.width // 2, img.height // 2))
            img = img.convert("RGB")
            img.thumbnail((side, side), Image.Resampling.BILINEAR)
    return len(paths) / (time.perf_counter() - t0)


def timed_count(folder: Path, out: Path, truth: Path | None = None) -> float:
    """Wall seconds of the whole `wbcnet count` command, start-up included."""
    t0 = time.perf_counter()
    cmd = ["wbcnet", "count", str(folder), "--out", str(out), "--no-fields", "--no-progress"]
    subprocess.run(cmd + (["--truth", str(truth)] if truth else []), check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", default=str(ROOT.parent / "shared" / "datasets" / "bccd-fields"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "count.md"))
    args = ap.parse_args(argv)
    fields = Path(args.fields)
    truth = read_truth(fields / "wbc_boxes.csv")
    names = sorted(truth)
    lines = ["# wbcnet count on BCCD fields", "",
             f"Made by `python -m benchmarks.count_fields` at commit {git_state()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {len(names)} fields with boxes.", "",
             "| magnification (simulated) | picture | white cells | recall | precision | find only, pictures/s (tiling included) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, side, what in [(1, 640, "BCCD's own"), (2, 640, "1/2: 2x2 fields in one"), (2, 1280, "1/2, camera 2x"),
                          (3, 960, "1/3: 3x3 fields in one"), (3, 1920, "1/3, camera 3x")]:
        r = detection(names, fields / "images", truth, k, side)
        n_pictures = len(names) // (k * k)
        lines.append(f"| {what} | {side}x{side * 3 // 4} | {r['true']} | {r['recall']:.3f} ({r['matched']}) | "
                     f"{r['precision']:.3f} ({r['found']} found) | {n_pictures / r['s']:.0f} |")
        print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        jpgs = sorted((fields / "images").glob("*.jpg"))
        wall = timed_count(fields / "images", Path(tmp) / "c", fields / "wbc_boxes.csv")
        ref = decode_reference(jpgs)
        t = json.loads((Path(tmp) / "c" / "truth.json").read_text())
        big = write_big_fields(names, fields / "images", Path(tmp) / "big", 200)
        big_wall = timed_count(big[0].parent, Path(tmp) / "b")
        big_ref = decode_reference(big)
    n = len(jpgs)
    lines += ["", f"CPU: {cpu_summary()}.", "",
              f"`wbcnet count {fields}/images --truth {fields}/wbc_boxes.csv --no-fields` with the shipped model: "
              f"{n} fields in {wall:.1f} s including Python and torch start-up, **{n / wall:.0f} fields/s** "
              f"(PIL decode + resize alone: {ref:.0f} fields/s); "
              f"recall {t['recall']:.3f}, precision {t['precision']:.3f}, type accuracy of matched cells "
              f"{t['type_accuracy']:.3f} [{t['type_accuracy_ci'][0]:.3f}, {t['type_accuracy_ci'][1]:.3f}] "
              f"({t['typed_matches']} typed), {t['type_accuracy_counted']:.3f} of the {t['typed_counted']} counted.",
              "", f"`wbcnet count` on {len(big)} fields of 1440x900 (2x2 BCCD fields each): {big_wall:.1f} s, "
              f"**{len(big) / big_wall:.1f} fields/s** including start-up (PIL decode + resize alone: {big_ref:.0f} fields/s)."]
    print(lines[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
