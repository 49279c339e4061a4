"""Ship a finished run as the package's built-in model and write MODEL_CARD.md from its numbers.

    python scripts/ship_model.py runs/RUN [--bccd ../shared/datasets/bccd-wbc-crops]

Copies the run's best checkpoint (weights only: EMA weights where the run kept them, no optimizer
state; its preprocessing, temperature and unfamiliar-image statistics with it) to
src/wbcnet/assets/model.{safetensors,json}, evaluates it on every lab's test split and on the
BCCD crops (another lab, never trained on), and writes MODEL_CARD.md and docs/model_card/*.png.
Every number in the card is read from the run's own files or measured here, never typed in;
the leave-one-lab-out table is benchmarks/results/lolo.md (`python -m benchmarks.lolo`), and the
finder's section is docs/model_card/finder.md (written with `benchmarks.finder_lolo`'s numbers).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from wbcnet.models import checkpoint as ckpt
from wbcnet.evaluation.evaluate import evaluate_sets

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "src" / "wbcnet" / "assets"
DOCS = REPO / "docs" / "model_card"


def summary_table(rows: list[dict]) -> str:
    out = ["| cells | n | accuracy (95% CI) | balanced accuracy | macro-F1 (95% CI) | ECE | flagged unfamiliar | "
           "accuracy of the rest | shift AUROC |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = r["share_unfamiliar"]
        out.append(f"| {r['set']} | {r['n']} | {r['accuracy']:.4f} ({r['accuracy_ci']}) | {r['balanced_accuracy']:.4f} | "
                   f"{r['macro_f1']:.4f} ({r['macro_f1_ci']}) | {r['ece']:.4f} | "
                   f"{share:.1%} | {r['accuracy_familiar']} | {r['shift_auroc']} |" if isinstance(share, float) else
                   f"| {r['set']} | {r['n']} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | {r['macro_f1']:.4f} | "
                   f"{r['ece']:.4f} | | | |")
    return "\n".join(out)


def per_class_table(m: dict) -> str:
    out = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, v in m["per_class"].items():
        out.append(f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "datasets" / "bccd-wbc-crops")
    args = ap.parse_args(argv)
    run = args.run.resolve()

    model, meta = ckpt.load_model(run / "best")
    meta.train_state = meta.optimizer = None
    ckpt.save_checkpoint(ASSETS / "model", model, meta)
    size_mb = (ASSETS / "model.safetensors").stat().st_size / 1e6
    print(f"shipped {run / 'best.safetensors'} -> {ASSETS / 'model.safetensors'} ({size_mb:.1f} MB)")

    model, meta = ckpt.load_model(ASSETS / "model")
    labs = [s["name"] for s in meta.sources]
    # NAME=split.csv keeps that lab's rows; --split test its test split; BCCD is evaluated whole.
    sets = [(lab, str(run / "split.csv")) for lab in labs]
    if args.bccd.is_dir() and "bccd" not in labs:  # a lab never trained on, scored whole
        sets.append(("bccd", str(args.bccd)))
    out = run / "shipped_eval"
    if out.exists():
        shutil.rmtree(out)
    rows = evaluate_sets(model, meta, sets, out, split="test", progress=False, n_resamples=1000, home=labs)
    results = {name: json.loads((out / name / "metrics.json").read_text()) for name, _ in sets}
    for r in rows:
        if r["set"] in labs:
            r["set"] = f"{r['set']} test split"

    DOCS.mkdir(parents=True, exist_ok=True)
    for old in DOCS.glob("*_confusion.png"):
        old.unlink()
    figures = {"training_curves.png": run / "test" / "training_curves.png"}
    for name, _ in sets:
        figures[f"{name}_confusion.png"] = out / name / "confusion_matrix.png"
    for fname, src in figures.items():
        if src.exists():
            shutil.copy(src, DOCS / fname)
    shutil.copy(run / "split.csv", DOCS / "split.csv")
    shutil.copy(run / "config.yaml", DOCS / "config.yaml")
    shutil.copy(run / "metrics.csv", DOCS / "training_history.csv")

    cfg = meta.config
    history = (run / "metrics.csv").read_text().strip().splitlines()
    train_minutes = sum(float(r.split(",")[7]) for r in history[1:]) / 60
    lolo_md = REPO / "benchmarks" / "results" / "lolo.md"
    lolo_lines = lolo_md.read_text().splitlines() if lolo_md.exists() else []
    lolo = "\n".join(l for l in lolo_lines if l.startswith("|")) + "".join(
        f"\n\n{l}" for l in lolo_lines if l.startswith("These runs trained")) if lolo_lines else \
        "(not measured yet: python -m benchmarks.lolo --copy-to benchmarks/results/lolo.md)"
    finder_md = REPO / "docs" / "model_card" / "finder.md"
    finder = finder_md.read_text() if finder_md.exists() else ""
    sources = "\n".join(f"  - `{s['name']}`: `{s['path']}`, {s['images']['train']} train / {s['images']['val']} "
                        f"val / {s['images']['test']} test cells" for s in meta.sources)
    card = f"""# Model card: the shipped wbcnet model

`wbcnet predict`, `evaluate`, `adapt` and the demo use this model when no `--checkpoint` is given.
Files: `src/wbcnet/assets/model.safetensors` ({size_mb:.1f} MB: weights and the unfamiliar-image
statistics) and `model.json` (classes, every model argument, preprocessing, normalisation,
temperature, shift threshold, the training config, the SHA-256 of the weights).
Written by `python scripts/ship_model.py {run.relative_to(REPO) if run.is_relative_to(REPO) else run}`; every number below comes from that
command or the run's own files.

## Model
`{meta.model}` {json.dumps(meta.model_args)}, {sum(p.numel() for p in model.parameters()):,} parameters.
Input: the white cell found in the picture and cropped to {meta.preprocess.get('context', 1.5)} cell diameters
(`crop: {meta.preprocess.get('crop')}`), resized to {meta.img_size} px. Classes: {', '.join(meta.classes)}.
Temperature (fitted on the validation split): {meta.temperature:.3f}. Unfamiliar-image threshold:
{meta.shift['threshold']:.1f} (Mahalanobis distance in the classifier's feature space; the 99th
percentile of the validation cells).

## Data and recipe
- Training data, {len(labs)} laboratories, each split within itself ({int(round((1 - cfg['val_frac'] - cfg['test_frac']) * 100))}/{int(round(cfg['val_frac'] * 100))}/{int(round(cfg['test_frac'] * 100))}, stratified,
  grouped, seed {cfg['seed']}; the split is `docs/model_card/split.csv`):
{sources}
- Raabin-WBC: Z. M. Kouzehkanan et al., Scientific Reports 12, 1123 (2022); grouped by field of
  view, near-duplicate cells kept on one side. PBC: A. Acevedo et al., Data in Brief 30, 105474
  (2020), CC BY 4.0; its file names carry no field of view, so one group per image. BCCD (MIT
  licence): 351 cells cut from 364 fields of a third lab, small JPEGs; grouped by field.
- Recipe: `wbcnet train --config configs/multilab.yaml` (commit `{meta.git_commit}`), saved as
  `docs/model_card/config.yaml`.
- Training: {len(history) - 1} epochs run (best epoch {meta.best_epoch}), {train_minutes:.1f} minutes of epochs on a
  2-core CPU (bf16 autocast), batch {cfg['batch_size']}, AdamW lr {cfg['lr']}, EMA {cfg['ema_decay']}.
  Per-epoch history: `docs/model_card/training_history.csv`.

## Results
{summary_table(rows)}

95% percentile-bootstrap intervals (1000 resamples, seed 0). Every row is a lab this model trained
on, scored on its own test split; where a class has few cells there (BCCD's basophils and
monocytes), its per-class scores are noisy.
"Flagged unfamiliar": share of cells the shift check refers to a person.

## Labs it never saw: leave-one-lab-out
The same recipe trained without each lab in turn, scored on every picture of the lab it left out
and on that lab's stand-ins (degraded copies made by `benchmarks/standins.py`, PIL/scipy code that
is not the training augmentation); `python -m benchmarks.lolo`, table
[benchmarks/results/lolo.md](benchmarks/results/lolo.md). These are the figures to expect on a
lab like one of these that the model never saw; the shipped model itself saw all three.

{lolo}

""" + "\n".join(f"""### {name}, per class
{per_class_table(m)}

![{name} confusion matrix](docs/model_card/{name}_confusion.png)
""" for name, m in results.items()) + """
![training curves](docs/model_card/training_curves.png)

## Known limits
- **Three source labs.** Scores on the test splits are scores on Raabin-WBC's, PBC's and BCCD's
  own microscopes, cameras and stains; the leave-one-lab-out table shows how far the recipe
  carries to a lab it never saw. Check on your own cells (`wbcnet evaluate --data YOUR_FOLDER --out OUT`), and where many cells are flagged
  unfamiliar, label a few and run `wbcnet adapt`.
- **The basophil colour shortcut.** Raabin-WBC's basophils were captured in a separate session
  with a darker background (`wbcnet data audit` finds background colour alone tells them apart,
  AUC ~0.99); PBC's basophils and the cell crop dilute it, but basophil scores on other labs rest
  on few cells.
- **The cell crop** assumes one white cell near the middle of the picture; two touching white
  cells are cropped together, and pictures with no white cell get the whole picture
  (`cell_found` = no in `predict`'s CSV).
- Five classes only; no blasts, no atypical or reactive lymphocytes, no smudge cells: such cells
  get one of the five names, unless the shift check flags them. Research use; not a medical device.

""" + finder
    (REPO / "MODEL_CARD.md").write_text(card)
    print(f"wrote {REPO / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
