"""Onboarding a lab (issue 19): its unlabelled cells, from single-cell pictures or whole fields,
the cells worth labelling, and adaptation with both labelled and unlabelled cells."""
import csv
import json
import shutil

import numpy as np

from wbcnet.models import checkpoint as ckpt
from wbcnet.cli.main import main
from wbcnet.lab.suggest import pick_cells
from wbcnet.inference.lab_cells import picture_kind, read_lab_cells
from wbcnet.cells.preprocess import from_meta

from conftest import REPO, SAMPLE, pbc_like_copy, shifted

FIELDS = REPO / "tests" / "data" / "fields"


def split_lab(lab, out, labelled_per_class: int, pool_per_class: int):
    """A shifted lab's cells: a few labelled, a pool to give without labels, the rest to score."""
    for d in sorted(p for p in lab.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.jpg"))
        for name, part in (("labelled", files[:labelled_per_class]),
                           ("pool", files[labelled_per_class:labelled_per_class + pool_per_class]),
                           ("test", files[labelled_per_class + pool_per_class:])):
            (out / name / d.name).mkdir(parents=True, exist_ok=True)
            for p in part:
                shutil.copy(p, out / name / d.name / p.name)
    pool = out / "pool_unlabelled"
    pool.mkdir()
    for p in sorted((out / "pool").rglob("*.jpg")):
        shutil.copy(p, pool / p.name)  # no class folders: nothing of the labels travels
    return out / "labelled", pool, out / "test"


def macro_f1_on(checkpoint, folder):
    from wbcnet.evaluation.evaluate import evaluate_folder

    model, meta = ckpt.load_model(checkpoint)
    return evaluate_folder(model, meta, folder, folder.parent / f"eval-{checkpoint.name}", progress=False,
                           explain_maps=False, n_resamples=0).macro_f1


def test_unlabelled_cells_help_a_shifted_lab(two_lab_run, tmp_path):
    """Another stain, magnification and camera (test_multilab.shifted): 2 labelled cells a class,
    then the same 2 plus 30 unlabelled a class. The unlabelled ones must lift the score."""
    from wbcnet.lab.adapt import adapt_lab

    _, run = two_lab_run
    pbc_like_copy(SAMPLE, tmp_path / "lab", transform=shifted)
    labelled, pool, test = split_lab(tmp_path / "lab", tmp_path / "parts", 2, 30)
    labels_only = adapt_lab(run, tmp_path / "labels-only", labelled=labelled, epochs=8)
    both = adapt_lab(run, tmp_path / "both", labelled=labelled, unlabelled=pool, epochs=8,
                     semi={"steps": 60, "unlabelled_batch": 32, "lr": 1e-3})
    f_labels, f_both = macro_f1_on(labels_only, test), macro_f1_on(both, test)
    print(f"macro-F1: labelled only {f_labels:.3f}, with the unlabelled cells {f_both:.3f}")
    assert f_both > f_labels + 0.03, (f_labels, f_both)
    meta = json.loads((both / "best.json").read_text())
    assert meta["adapted_from"]["unlabelled"]["cells"] == 150 and meta["adapted_from"]["labelled"]["cells"] == 10
    assert meta["shift"]["n_fit"] > 10  # the check refitted on the lab's own cells
    assert not (both / "last.safetensors").exists()  # stage one's resumable state would describe another model


def test_fields_give_their_whole_cells(two_lab_run):
    _, run = two_lab_run
    assert picture_kind(str(FIELDS / "BloodImage_00000.jpg")) == "field"
    assert picture_kind(str(next((SAMPLE / "Monocyte").glob("*.jpg")))) == "cell"
    _, meta = ckpt.read_checkpoint(run)
    prep = from_meta(meta)
    cells = read_lab_cells(str(FIELDS), prep, progress=False)
    assert cells.n_fields == 6 and cells.n_pictures == 0
    assert 4 <= len(cells) <= 12 and all(b is not None for b in cells.boxes)  # ~1 white cell a BCCD field
    assert cells.images.shape[1:] == (3, prep.size, prep.size)
    as_cells = read_lab_cells(str(FIELDS), prep, kind="cells", progress=False)
    assert as_cells.n_fields == 0 and all(b is None for b in as_cells.boxes)


def test_picks_cover_every_class_and_spread():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5) * 0.3, size=400)
    probs[:, 0] *= 0.05  # a rare class
    probs /= probs.sum(1, keepdims=True)
    features = rng.normal(size=(400, 16))
    picks = pick_cells(probs, features, 40, list("ABCDE"))
    idx = [p.index for p in picks]
    assert len(idx) == 40 == len(set(idx))
    assert idx[0] == int(np.argmax(probs[:, 0]))  # the likeliest member of the rarest class first
    assert all(int(np.argmax(probs[:, c])) in idx[:10] for c in range(5))  # two slots for each class
    # The rest are spread over the features: no two from the same tight spot.
    rest = features[idx[10:]]
    d = np.linalg.norm(rest[:, None] - rest[None], axis=2) + np.eye(len(rest)) * 1e9
    assert d.min() > 0


def test_suggest_label_adapt(two_lab_run, tmp_path, capsys):
    """The three lines of the README: suggest, fill in the sheet, adapt with it."""
    _, run = two_lab_run
    pbc_like_copy(SAMPLE, tmp_path / "lab", per_class=12, transform=shifted)
    pool = tmp_path / "pool"
    pool.mkdir()
    truth = {}
    for p in sorted((tmp_path / "lab").rglob("*.jpg")):
        shutil.copy(p, pool / p.name)
        truth[p.name] = p.parent.name
    assert main(["adapt", "--checkpoint", str(run), "--unlabelled", str(pool), "--suggest", "12", "--out",
                 str(tmp_path / "s"), "--no-progress"]) == 0
    sheet = tmp_path / "s" / "suggest.csv"
    rows = list(csv.DictReader(open(sheet)))
    assert len(rows) == 12 and all(r["label"] == "" and r["reason"] for r in rows)
    assert all((tmp_path / "s" / r["path"]).is_file() for r in rows)
    assert main(["adapt", "--checkpoint", str(run), "--data", str(sheet), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 2
    assert "no cell has a label yet" in capsys.readouterr().err
    # A person labels 8 of the 12 (the cell pictures are new files: label them by what they show).
    from wbcnet.lab.suggest import write_sheet

    classes = sorted(set(truth.values()))
    for i, r in enumerate(rows[:8]):
        r["label"] = classes[i % len(classes)]
    rows[8]["label"] = "skip"  # the page's word for "not a white cell / can't tell"
    write_sheet(sheet, rows)
    assert main(["adapt", "--checkpoint", str(run), "--unlabelled", str(pool), "--suggest", "12", "--out",
                 str(tmp_path / "s"), "--no-progress"]) == 2  # suggesting again would lose the labels
    assert "holds labels already" in capsys.readouterr().err and list(csv.DictReader(open(sheet)))[0]["label"]
    assert main(["adapt", "--checkpoint", str(run), "--data", str(sheet), "--unlabelled", str(pool), "--steps", "3",
                 "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "a" / "best.json").read_text())
    assert meta["adapted_from"]["labelled"]["cells"] == 8 and meta["adapted_from"]["unlabelled"]["cells"] == 60
    assert meta["shift"] is None  # 60 cells are too few to refit the unfamiliar-image check on


def test_adapt_lab_errors_are_one_line(two_lab_run, tmp_path, capsys):
    _, run = two_lab_run
    (tmp_path / "empty").mkdir()
    assert main(["adapt", "--checkpoint", str(run), "--data", str(SAMPLE), "--unlabelled", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no pictures here" in err and not (tmp_path / "o").exists()
    # Unlabelled pictures alone made the model worse where measured: refused, with what to do instead.
    assert main(["adapt", "--checkpoint", str(run), "--unlabelled", str(SAMPLE), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--suggest" in err and not (tmp_path / "o").exists()
    assert main(["adapt", "--checkpoint", str(run), "--suggest", "5", "--out", str(tmp_path / "o")]) == 2
    assert "give --unlabelled" in capsys.readouterr().err
