"""Ship a finished run as one of the package's models (the zoo) and write MODEL_CARD.md.

    python scripts/ship_model.py runs/RUN --name fast|accurate [--bccd ../shared/datasets/bccd-wbc-crops]

Copies the run's best checkpoint (weights only: EMA weights where the run kept them, no optimizer
state; its preprocessing, temperature and unfamiliar-image statistics with it) to
src/wbcnet/assets/NAME.{safetensors,json}; evaluates it on every lab's test split (and on the
BCCD crops whole when BCCD was not a training lab); times the classifier here beside a PIL decode
yardstick; writes what it measured into the checkpoint's `card` (what `wbcnet models` and the page
show), this model's section docs/model_card/NAME.md with its figures in docs/model_card/NAME/, and
MODEL_CARD.md from every installed model's section. Every number is read from the run's own files
or measured here, never typed in. The leave-one-lab-out table is benchmarks/results/lolo.md
(`python -m benchmarks.lolo`); the finder's section is docs/model_card/finder.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from wbcnet.evaluation.evaluate import evaluate_sets
from wbcnet.inference.speed import classifier_speed, decode_reference
from wbcnet.core.weights import sha256_file
from wbcnet.models import checkpoint as ckpt
from wbcnet.models.zoo import ZOO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmarks/, as `python -m benchmarks.X` finds it
from benchmarks.common import cpu_summary, n_to_e  # noqa: E402

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


def ship(run: Path, name: str, bccd: Path) -> tuple:
    """Copy, evaluate and time; the card goes into the shipped JSON. Returns what the section needs."""
    model, meta = ckpt.load_model(run / "best")
    meta.train_state = meta.optimizer = None
    stem = ASSETS / name
    ckpt.save_checkpoint(stem, model, meta)
    model, meta = ckpt.load_model(stem)
    labs = [s["name"] for s in meta.sources]
    # NAME=split.csv keeps that lab's rows; --split test its test split; BCCD is evaluated whole.
    sets = [(lab, str(run / "split.csv")) for lab in labs]
    if bccd.is_dir() and "bccd" not in labs:  # a lab never trained on, scored whole
        sets.append(("bccd", str(bccd)))
    out = run / "shipped_eval"
    if out.exists():
        shutil.rmtree(out)
    rows = evaluate_sets(model, meta, sets, out, split="test", progress=False, n_resamples=1000, home=labs)
    results = {lab: json.loads((out / lab / "metrics.json").read_text()) for lab, _ in sets}
    for r in rows:
        if r["set"] in labs:
            r["set"] = f"{r['set']} test split"
    reference = decode_reference()
    speed = classifier_speed(model, meta, n=512)
    meta.card = {
        "shipped_from": run.name, "commit": meta.git_commit,
        "parameters": sum(p.numel() for p in model.parameters()),
        "figures": [{k: r[k] for k in ("set", "n", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci")}
                    | {"n_to_e": n_to_e(results[lab])} for r, (lab, _) in zip(rows, sets)],
        "speed": {"img_per_s": round(speed, 1), "reference_decode_per_s": round(reference, 1), "cpu": cpu_summary(),
                  "threads": torch.get_num_threads(), "what": "the classifier alone as predict runs it, batch 64; "
                  "reference: PIL decoding a 224 px cell JPEG to 112 px, one thread, same run"}}
    ckpt.save_checkpoint(stem, model, meta)
    return model, meta, rows, results, sets


def section(run: Path, name: str, model, meta, rows, results, sets) -> str:
    """This model's part of MODEL_CARD.md, with its pictures in docs/model_card/NAME/."""
    folder = DOCS / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    out = run / "shipped_eval"
    figures = {"training_curves.png": run / "test" / "training_curves.png"}
    for lab, _ in sets:
        figures[f"{lab}_confusion.png"] = out / lab / "confusion_matrix.png"
    for fname, src in figures.items():
        if src.exists():
            shutil.copy(src, folder / fname)
    for src, fname in ((run / "split.csv", "split.csv"), (run / "config.yaml", "config.yaml"),
                       (run / "metrics.csv", "training_history.csv")):
        shutil.copy(src, folder / fname)
    cfg = meta.config
    history = (run / "metrics.csv").read_text().strip().splitlines()
    train_minutes = sum(float(r.split(",")[7]) for r in history[1:]) / 60
    size_mb = ZOO[name].path.stat().st_size / 1e6
    sources = "\n".join(f"  - `{s['name']}`: `{s['path']}`, {s['images']['train']} train / {s['images']['val']} "
                        f"val / {s['images']['test']} test cells" for s in meta.sources)
    start = ""
    if meta.pretrained and meta.pretrained.get("method"):  # a `wbcnet pretrain` backbone
        pre = meta.pretrained
        cells = ", ".join(f"{c['name']} {c['cells']:,}" for c in pre.get("sources", []))
        start = (f"\n- Started from a `wbcnet pretrain` backbone ({pre['method']}, SHA-256 `{pre['weights_sha256'][:12]}`): "
                 f"every layer but the classifier, learned without labels from {pre['cells']:,} cells ({cells}). "
                 f"Its cells were the train and val rows of this split and the cells the finder cuts from the "
                 f"fourth lab's fields: no test cell. Its command and log: "
                 f"[docs/training-logs/pretrain-all.log](docs/training-logs/pretrain-all.log), "
                 f"its gain: [benchmarks/results/pretrain.md](benchmarks/results/pretrain.md).")
    elif meta.pretrained:
        sha = meta.pretrained["weights_sha256"]
        same = [m.name for m in ZOO.values() if m.installed and m.name != name and sha256_file(m.path) == sha]
        what = f"the `{same[0]}` model's weights" if same else f"`{Path(meta.pretrained['path']).name}`"
        start = (f"\n- Started from {what} (SHA-256 `{sha[:12]}`): every layer whose shape fits, the position grid "
                 f"resized; `configs/{name}.yaml` is this recipe, naming that file." if same else
                 f"\n- Started from {what} (SHA-256 `{sha[:12]}`), every layer whose shape fits.")
    speed = meta.card["speed"]
    n2e = {f["set"]: f["n_to_e"] for f in meta.card["figures"]}
    return f"""## {name}
For {ZOO[name].purpose}: `wbcnet predict --model {name}` (and evaluate, count, adapt, export, serve). Files:
`src/wbcnet/assets/{name}.safetensors` ({size_mb:.1f} MB: weights and the unfamiliar-image statistics) and
`{name}.json` (classes, every model argument, preprocessing, normalisation, temperature, shift threshold,
the training config, the SHA-256 of the weights, and this card's figures).
Written by `python scripts/ship_model.py {run.relative_to(REPO) if run.is_relative_to(REPO) else run} --name {name}`.

### Model
`{meta.model}` {json.dumps(meta.model_args)}, {meta.card['parameters']:,} parameters.
Input: the white cell found in the picture and cropped to {meta.preprocess.get('context', 1.5)} cell diameters
(`crop: {meta.preprocess.get('crop')}`), resized to **{meta.img_size} px**. Classes: {', '.join(meta.classes)}.
Temperature (fitted on the validation split): {meta.temperature:.3f}. Unfamiliar-image threshold:
{meta.shift['threshold']:.1f} (Mahalanobis distance in the classifier's feature space; the 99th
percentile of the validation cells).
Speed here: **{speed['img_per_s']:.0f} images/s**, the classifier alone as `predict` runs it (batch 64,
{speed['threads']} threads, {speed['cpu']}), beside PIL decoding a 224 px cell to 112 px on one thread in the
same run: {speed['reference_decode_per_s']:.0f}/s. Whole commands, both models:
[benchmarks/results/zoo.md](benchmarks/results/zoo.md).

### Data and recipe
- Training data, {len(meta.sources)} laboratories, each split within itself ({int(round((1 - cfg['val_frac'] - cfg['test_frac']) * 100))}/{int(round(cfg['val_frac'] * 100))}/{int(round(cfg['test_frac'] * 100))}, stratified,
  grouped, seed {cfg['seed']}; the split is `docs/model_card/{name}/split.csv`):
{sources}
- Recipe: `docs/model_card/{name}/config.yaml` (`wbcnet train --config` it), commit `{meta.git_commit}`.{start}
- Training: {len(history) - 1} epochs run (best epoch {meta.best_epoch}), {train_minutes:.1f} minutes of epochs on a
  2-core CPU (bf16 autocast), batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']}, EMA {cfg['ema_decay']}.
  Per-epoch history: `docs/model_card/{name}/training_history.csv`.

### Results
{summary_table(rows)}

95% percentile-bootstrap intervals (1000 resamples, seed 0). Every row is a lab this model trained
on, scored on its own test split, except a lab marked otherwise; where a class has few cells (BCCD's
basophils and monocytes), its per-class scores are noisy. "Flagged unfamiliar": share of cells the
shift check refers to a person. Neutrophils called eosinophils: {', '.join(f'{k} {v}' for k, v in n2e.items() if v is not None)}.

""" + "\n".join(f"""#### {lab}, per class
{per_class_table(m)}

![{name} on {lab}: confusion matrix](docs/model_card/{name}/{lab}_confusion.png)
""" for lab, m in results.items()) + f"""
![{name}: training curves](docs/model_card/{name}/training_curves.png)
"""


def zoo_table() -> str:
    """The installed models side by side, from their cards."""
    lines = ["| model | input | parameters | file | classifier here (img/s) | " + " | ".join(
        ["Raabin-WBC test acc / macro-F1", "PBC test acc / macro-F1", "N→E (Raabin test)"]) + " |",
        "|---|---|---|---|---|---|---|---|"]
    for m in ZOO.values():
        if not m.installed:
            continue
        meta = json.loads(m.path.with_suffix(".json").read_text())
        card = meta.get("card") or {}
        figs = {f["set"].split()[0]: f for f in card.get("figures", [])}

        def fig(lab):
            f = figs.get(lab)
            return f"{f['accuracy']:.4f} / {f['macro_f1']:.4f}" if f else "not measured"
        sp = card.get("speed", {})
        lines.append(f"| [`{m.name}`](#{m.name}) | "
                     f"{meta['img_size']} px | {card.get('parameters', 0):,} | {m.path.stat().st_size / 1e6:.1f} MB | "
                     f"{sp.get('img_per_s', float('nan')):.0f} (decode {sp.get('reference_decode_per_s', float('nan')):.0f}) | "
                     f"{fig('raabin')} | {fig('pbc')} | {figs.get('raabin', {}).get('n_to_e', '')} |")
    return "\n".join(lines)


def write_card() -> None:
    lolo_md = REPO / "benchmarks" / "results" / "lolo.md"
    lolo_lines = lolo_md.read_text().splitlines() if lolo_md.exists() else []
    # The file's first table is the fast recipe's (the accurate recipe's fold follows in its own section).
    first = next((i for i, l in enumerate(lolo_lines) if l.startswith("|")), len(lolo_lines))
    end = next((i for i in range(first, len(lolo_lines)) if not lolo_lines[i].startswith("|")), len(lolo_lines))
    after = lolo_lines[end:next((i for i in range(end, len(lolo_lines)) if lolo_lines[i].startswith("#")),
                                len(lolo_lines))]
    lolo = "\n".join(lolo_lines[first:end] + [""] + [l for l in after if l.startswith("These runs trained")]) \
        if end > first else \
        "(not measured yet: python -m benchmarks.lolo --copy-to benchmarks/results/lolo.md)"
    finder_md = DOCS / "finder.md"
    finder = finder_md.read_text() if finder_md.exists() else ""
    fast_meta = json.loads(ZOO["fast"].path.with_suffix(".json").read_text()) if ZOO["fast"].installed else {}
    backbone = (fast_meta.get("pretrained") or {}).get("method")
    # A backbone pretrained on every lab's pictures leaves no lab out of the shipped fast model's recipe:
    # its folds are the recipe from a random start (and, labelled so, the backbone's BCCD figure).
    simclr = ("" if not backbone else
              f"\n\nThe shipped `fast` model starts from a {backbone} backbone learned from every lab's pictures "
              "(labels unused), so no lab was left out of its own recipe: the folds below are the same recipe "
              "from a random start. What the backbone buys, on cells it never saw, and the BCCD figure of the "
              "recipe with the backbone but without BCCD's labels (not a leave-one-lab-out figure: the backbone "
              "saw BCCD's crops) are in [benchmarks/results/pretrain.md](benchmarks/results/pretrain.md).")
    sections = [(DOCS / f"{m.name}.md").read_text() for m in ZOO.values()
                if m.installed and (DOCS / f"{m.name}.md").exists()]
    card = f"""# Model card: the models wbcnet comes with

wbcnet comes with two models; every command that runs one takes `--model fast` (the default) or
`--model accurate`, and `wbcnet models` lists them with their speed on your machine. Both read the
same pictures the same way (the learned finder's cell crop) and answer in the same five classes.

{zoo_table()}

Each row's figures are its section's: the test splits of the labs it trained on (Raabin-WBC and PBC),
95% intervals there. How far each carries to a lab it never saw, and to your own, is below.

""" + "\n".join(sections) + f"""
## Labs it never saw: leave-one-lab-out
The `fast` recipe trained without each lab in turn, scored on every picture of the lab it left out
and on that lab's stand-ins (degraded copies made by `benchmarks/standins.py`, PIL/scipy code that
is not the training augmentation); `python -m benchmarks.lolo`, table
[benchmarks/results/lolo.md](benchmarks/results/lolo.md). These are the figures to expect on a
lab like one of these that the model never saw; the shipped models themselves saw all three.
The table is the `fast` recipe's; the `accurate` recipe's fold that left BCCD out (the only one of
its folds run) is in [lolo.md](benchmarks/results/lolo.md#the-accurate-recipe-issue-30-bccd-left-out),
and both side by side in [benchmarks/results/zoo.md](benchmarks/results/zoo.md).{simclr}

{lolo}

## Known limits
- **Three source labs.** Scores on the test splits are scores on Raabin-WBC's, PBC's and BCCD's
  own microscopes, cameras and stains; the leave-one-lab-out table shows how far the recipe
  carries to a lab it never saw. Check on your own cells (`wbcnet evaluate --data YOUR_FOLDER --out OUT`), and where many cells are flagged
  unfamiliar, label a few and run `wbcnet adapt`.
- **`accurate` is more accurate on the labs it trained on, not on every lab.** On the stand-ins of
  a lab it never saw (BCCD's pictures blurred and paled, yellow-cast, or from a low-resolution
  camera) its fold scored below the `fast` recipe's fold ([zoo.md](benchmarks/results/zoo.md)): on
  blurred or low-resolution pictures from a new lab, compare the two on a few of your labelled
  cells (`wbcnet evaluate --model fast` and `--model accurate`) before choosing.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", required=True, choices=sorted(ZOO), help="which model of the zoo the run becomes")
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "datasets" / "bccd-wbc-crops")
    args = ap.parse_args(argv)
    run = args.run.resolve()
    model, meta, rows, results, sets = ship(run, args.name, args.bccd)
    print(f"shipped {run / 'best.safetensors'} -> {ZOO[args.name].path}")
    (DOCS / f"{args.name}.md").write_text(section(run, args.name, model, meta, rows, results, sets))
    write_card()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
