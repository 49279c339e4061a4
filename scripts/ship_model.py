"""Ship a finished run as the package's built-in model and write MODEL_CARD.md from its numbers.

    python scripts/ship_model.py runs/RUN [--bccd ../shared/datasets/bccd-wbc-crops]

Copies the run's best checkpoint (weights only: EMA weights where the run kept them, no optimizer
state) to src/wbcnet/assets/model.{safetensors,json}, evaluates it on the BCCD crops (another lab,
never trained on), and writes MODEL_CARD.md and docs/model_card/*.png. Every number in the card
is read from the run's own evaluation files or measured here, never typed in.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from wbcnet import checkpoint as ckpt
from wbcnet.evaluate import evaluate_folder

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "src" / "wbcnet" / "assets"
DOCS = REPO / "docs" / "model_card"


def metrics_table(rows: list[tuple[str, dict]]) -> str:
    out = ["| split | n | accuracy | balanced accuracy | macro-F1 | weighted-F1 |", "|---|---|---|---|---|---|"]
    for name, m in rows:
        out.append(f"| {name} | {m['n']} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | {m['macro_f1']:.4f} | "
                   f"{m['weighted_f1']:.4f} |")
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
    shipped = {k: meta[k] for k in ("classes", "model", "model_args", "img_size", "mean", "std", "temperature",
                                    "config", "git_commit", "data", "seed", "best_epoch", "val_macro_f1",
                                    "val_accuracy") if k in meta}
    for k in ("calibration",):
        if k in meta:
            shipped[k] = meta[k]
    shipped["source_run"] = run.name
    ckpt.save_checkpoint(ASSETS / "model", model, shipped)
    size_mb = (ASSETS / "model.safetensors").stat().st_size / 1e6
    print(f"shipped {run / 'best.safetensors'} -> {ASSETS / 'model.safetensors'} ({size_mb:.1f} MB)")

    val = json.loads((run / "val" / "metrics.json").read_text())
    test = json.loads((run / "test" / "metrics.json").read_text())
    rows = [("validation (grouped split)", val), ("test (grouped split)", test)]
    bccd = None
    if args.bccd.is_dir():
        model, meta = ckpt.load_model(ASSETS / "model")
        bccd = evaluate_folder(model, meta, args.bccd, run / "bccd", progress=False)
        rows.append(("BCCD crops (other lab, never trained on)", bccd))
    DOCS.mkdir(parents=True, exist_ok=True)
    figures = {"val_confusion.png": run / "val" / "confusion_matrix.png",
               "test_confusion.png": run / "test" / "confusion_matrix.png",
               "training_curves.png": run / "test" / "training_curves.png"}
    if bccd is not None:
        figures["bccd_confusion.png"] = run / "bccd" / "confusion_matrix.png"
    for name, src in figures.items():
        if src.exists():
            shutil.copy(src, DOCS / name)

    cfg = meta["config"]
    history = (run / "metrics.csv").read_text().strip().splitlines()
    epochs_run = len(history) - 1
    train_minutes = sum(float(r.split(",")[7]) for r in history[1:]) / 60
    commit = shipped.get("git_commit") or "unknown"
    card = f"""# Model card: the shipped wbcnet model

`wbcnet predict`, `wbcnet evaluate` and the demo use this model when no `--checkpoint` is given.
Files: `src/wbcnet/assets/model.safetensors` ({size_mb:.1f} MB, weights only) and `model.json`
(classes, model arguments, image size, normalisation, temperature, the full training config).
This card was written by `python scripts/ship_model.py runs/{run.name}`; every number below comes
from that run's evaluation files or from that command.

## Model
`{meta['model']}` {json.dumps(meta.get('model_args', {}))}, {meta['img_size']} px input,
{sum(p.numel() for p in model.parameters()):,} parameters. Classes: {', '.join(meta['classes'])}.
Temperature (fitted on the validation split): {meta.get('temperature', 1.0):.3f}.

## Data and recipe
- Training data: the Train split of Raabin-WBC as laid out in `../shared/datasets/raabin-wbc-train`
  (10,175 cells, 224 px JPEGs). Cite: Z. M. Kouzehkanan et al., "A large dataset of white blood
  cells containing cell locations and types, along with segmented nuclei and cytoplasm",
  Scientific Reports 12, 1123 (2022).
- Recipe: `wbcnet train --config configs/raabin-wbc.yaml` (commit `{commit}`, seed {cfg['seed']}).
- Split: stratified by class, grouped by field of view (file name minus its final `_N`), with
  near-duplicate cells (one cell photographed under two names) kept on one side:
  {int(round((1 - cfg['val_frac'] - cfg['test_frac']) * 100))}/{int(round(cfg['val_frac'] * 100))}/{int(round(cfg['test_frac'] * 100))} train/val/test, seed {cfg['seed']}; the split is `runs/{run.name}/split.csv`.
- Training: {epochs_run} epochs run (best epoch {meta.get('best_epoch')}), {train_minutes:.1f} minutes of epochs on a
  2-core CPU (bf16 autocast), batch {cfg['batch_size']}, AdamW lr {cfg['lr']}, EMA {cfg['ema_decay']}.

## Results
{metrics_table(rows)}

Test split, per class:

{per_class_table(test)}

![test confusion matrix](docs/model_card/test_confusion.png)
![validation confusion matrix](docs/model_card/val_confusion.png)
![training curves](docs/model_card/training_curves.png)
"""
    if bccd is not None:
        card += f"""
BCCD crops, per class (3 basophils and 20 monocytes: noisy):

{per_class_table(bccd)}

![BCCD confusion matrix](docs/model_card/bccd_confusion.png)
"""
    card += """
## Known limits
- **One source lab.** All training images come from one laboratory's smears, microscopes and
  cameras (Raabin-WBC). Scores on the validation and test splits are scores on that lab; the BCCD
  row above shows how far they carry to another lab, camera and framing. Check on your own
  images (`wbcnet evaluate --data YOUR_FOLDER --out OUT`) before trusting it.
- **The basophil colour shortcut.** Raabin-WBC's basophils were captured in a separate session;
  their background is darker and less red/blue than the other classes'
  (`wbcnet data audit ../shared/datasets/raabin-wbc-train` finds background colour alone tells
  basophils from the rest with AUC ~0.99). A model can learn that colour instead of the cell.
  Colour augmentation (hue, saturation, per-channel gain) is there against it, but basophil
  scores on other labs' images are not established (BCCD has 3).
- Five classes only; no blasts, no atypical or reactive lymphocytes, no smudge cells: such cells
  get one of the five names. Use `--min-confidence` to refer unsure cells to a person.
- Research use; not a medical device.
"""
    (REPO / "MODEL_CARD.md").write_text(card)
    print(f"wrote {REPO / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
