"""`wbcnet demo`: the quickstart job. Trains mhcnn on the bundled sample cells, evaluates it on a
held-out split, and runs the shipped model over the sample."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import WbcnetError
from ..core.files import ASSETS
from ..inference.predict import expand_inputs, predict_paths, write_rows
from ..models.checkpoint import SHIPPED, load_model
from ..training.classifier import fit
from ..training.config import TrainConfig

SAMPLE = ASSETS / "sample"


def run_demo(out, epochs: int = 30, seed: int = 0, progress: bool = True) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise WbcnetError(f"{out}: exists and is not empty; pick another --out")
    cfg = TrainConfig(data=str(SAMPLE), out=str(out / "run"), model="mhcnn", img_size=96, epochs=epochs,
                      batch_size=32, lr=2e-3, warmup_epochs=2, patience=0, val_frac=0.2, test_frac=0.2,
                      seed=seed, cache_dir=None, progress=progress)
    print(f"demo: training mhcnn on the bundled sample ({SAMPLE}), {cfg.epochs} epochs")
    run = fit(cfg)
    if SHIPPED.with_suffix(".safetensors").exists():
        model, meta = load_model(None)
        paths, _ = expand_inputs([str(SAMPLE)])
        rows = predict_paths(model, meta, paths, progress=progress)
        write_rows(rows, meta.classes, out / "shipped_model_predictions.csv")
        truth = [Path(p).parent.name for p in paths]
        acc = sum(r["predicted"] == t for r, t in zip(rows, truth)) / max(1, len(rows))
        print(f"shipped model on the {len(rows)} sample cells: accuracy {acc:.4f} "
              f"-> {out / 'shipped_model_predictions.csv'}\n  (the sample comes from the images it was trained on: "
              f"this shows it runs, not how good it is; MODEL_CARD.md has held-out scores)")
    print(f"\nresults in {out.resolve()}:")
    for p in sorted((run / "test").iterdir()):
        print(f"  {p}")
    return out
