"""What a `wbcnet pretrain` backbone learned before any fine-tuning: a linear probe on its frozen
features, beside the same model at its random start (same seed, same inputs).

    python -m benchmarks.probe_backbone --backbone runs/pretrain-tv/backbone \
        --split runs/multilab-lf/split.csv --bccd ../shared/datasets/bccd-wbc-crops \
        --out benchmarks/results/probe_backbone.md

The features are the classifier layer's input (pretrain.Features, eval mode), one per cell,
decoded with the backbone's own preprocessing. A logistic regression (scikit-learn, on
standardised features) is fitted on the split's train rows, all of them or k labelled cells per
class (a few draws), and scored on its test rows (Raabin-WBC, PBC) and on BCCD's crops (never in
the backbone's cells when --data named only the two labs). Labels are used only here, to probe.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def features_of(model, images: np.ndarray, mean, std, batch: int = 256) -> np.ndarray:
    """(N, D) float32: the classifier layer's input for each uint8 (N, 3, S, S) cell, no augmentation."""
    import torch

    from wbcnet.data.augment import normalize, to_float
    from wbcnet.training.pretrain import Features

    feats = Features(model).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = normalize(to_float(torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))), mean, std)
            out.append(feats(x).float().numpy())
    return np.concatenate(out)


def probe(train_x, train_y, tests: dict, shots: int | None, seed: int) -> dict:
    """Fit on (all, or `shots` a class of) the train features; {test name: (accuracy, macro-F1)}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if shots is not None:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.choice(np.flatnonzero(train_y == c), shots, replace=False)
                               for c in np.unique(train_y)])
        train_x, train_y = train_x[keep], train_y[keep]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0 if shots is None else 0.1))
    clf.fit(train_x, train_y)
    scores = {}
    for name, (x, y) in tests.items():
        predicted = clf.predict(x)
        scores[name] = (accuracy_score(y, predicted), f1_score(y, predicted, average="macro"))
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True, help="a wbcnet pretrain folder")
    ap.add_argument("--split", required=True, help="a run's split.csv: train rows to fit, test rows to score")
    ap.add_argument("--bccd", help="a labelled ImageFolder scored as a third test set")
    ap.add_argument("--shots", type=int, default=10, help="labelled cells a class for the few-shot probe (default 10)")
    ap.add_argument("--draws", type=int, default=3, help="few-shot draws (default 3)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=".cache/wbcnet", help="decode cache (default .cache/wbcnet, as train's)")
    ap.add_argument("--out", required=True, help="markdown file for the table")
    args = ap.parse_args(argv)

    import torch

    from wbcnet.models.backbone import read_backbone
    from wbcnet.training.config import TrainConfig
    from wbcnet.data.cache import cached_decode
    from wbcnet.cells.preprocess import from_meta
    from wbcnet.data.scan import scan
    from wbcnet.training.classifier import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    _, meta = read_backbone(args.backbone)
    prep = from_meta(meta)  # the backbone's preprocessing, as a checkpoint's is read
    sets = {}
    for name, path, split, source in (("train", args.split, "train", ""), ("raabin", args.split, "test", "raabin"),
                                      ("pbc", args.split, "test", "pbc"), ("bccd", args.bccd, None, "")):
        if path is None:
            continue
        found = scan(path, split=split, source=source)
        decoded = cached_decode([s.path for s in found.samples], prep, args.cache_dir, desc=f"decoding {name}")
        labels = np.array([found.classes[found.samples[i].label] for i in decoded.index])
        sets[name] = (decoded.images, labels)
    classes = sorted(set(sets["train"][1]))

    rows = []
    for start in ("random start (same seed)", "SimCLR backbone"):
        base = dict(model=meta.model, model_args={k: v for k, v in meta.model_args.items() if k != "img_size"},
                    img_size=meta.img_size, seed=meta.seed, crop=prep.crop, crop_context=prep.context,
                    stain=prep.stain)
        if start == "SimCLR backbone":
            base["pretrained"] = str(args.backbone)
        model = build_model(TrainConfig(data=[], out="unused", **base), len(classes))
        t0 = time.perf_counter()
        feats = {n: (features_of(model, x, meta.mean, meta.std), np.array([classes.index(c) for c in y]))
                 for n, (x, y) in sets.items()}
        n = sum(len(v[0]) for v in feats.values())
        print(f"{start}: features of {n} cells in {time.perf_counter() - t0:.0f} s", flush=True)
        train_x, train_y = feats.pop("train")
        full = probe(train_x, train_y, feats, None, 0)
        few = [probe(train_x, train_y, feats, args.shots, seed) for seed in range(args.draws)]
        for label, scores in (("all train cells", full),
                              (f"{args.shots} a class ({args.draws} draws)",
                               {n: tuple(np.mean([f[n][i] for f in few]) for i in (0, 1)) for n in feats})):
            rows.append(f"| {start} | {label} | " + " | ".join(f"{scores[n][0]:.3f} / {scores[n][1]:.3f}"
                                                               for n in feats) + " |")
            print(rows[-1], flush=True)
    header = ["| features | probe fitted on | " + " | ".join(f"{n} acc / macro-F1" for n in feats) + " |",
              "|---|---|" + "---|" * len(feats)]
    recipe = ", ".join(f"{k} {meta.recipe.get(k)}"
                       for k in ("epochs", "warmup_epochs", "batch_size", "lr", "temperature"))
    Path(args.out).write_text(f"Linear probe of `{args.backbone}` ({meta.method}, {meta.cells} cells, {recipe}, "
                              f"seed {meta.seed}): `python -m benchmarks.probe_backbone`\n\n"
                              + "\n".join(header + rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
