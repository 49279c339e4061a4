"""Cells from several labs: named sources, grouping that survives other labs' file names, the
find-the-cell crop travelling in the checkpoint, evaluation over several sets, and the
unfamiliar-image check (issues 8 and 13)."""
import csv
import json
import shutil

import numpy as np
import pytest

from wbcnet.models import checkpoint as ckpt
from wbcnet.cli.main import main
from wbcnet.data.scan import Sample
from wbcnet.data.sources import degenerate_grouping, parse_sources, regroup
from wbcnet.core.errors import WbcnetError
from wbcnet.training.classifier import sampling_weights

from conftest import REPO, SAMPLE, pbc_like_copy, shifted

FRAMINGS = REPO / "tests" / "data" / "framings"


@pytest.fixture(scope="module")
def cell_crop_checkpoint(tmp_path_factory):
    """An untrained model whose checkpoint asks for the cell crop."""
    import torch

    from wbcnet.models import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("crop")
    model = create_model("mhcnn", num_classes=5, img_size=64)
    meta = ckpt.new_meta(sorted(d.name for d in SAMPLE.iterdir() if d.is_dir()), "mhcnn", {"img_size": 64}, 64,
                         [0.6, 0.5, 0.6], [0.2, 0.2, 0.2], preprocess={"crop": "cell", "context": 1.5})
    ckpt.save_checkpoint(folder / "best", model, meta)
    return folder


def test_sources_are_named_and_checked():
    assert [(s.name, s.path) for s in parse_sources("data/x")] == [("x", "data/x")]
    assert [s.name for s in parse_sources(["a=p", "b=q"])] == ["a", "b"]
    with pytest.raises(WbcnetError, match="name each one"):
        parse_sources(["p", "q"])
    with pytest.raises(WbcnetError, match="used twice"):
        parse_sources(["a=p", "a=q"])


def test_groups_that_are_labels_fall_back_to_one_per_image():
    pbc = [Sample(f"BA_{k}.jpg", 0, "BA", "pbc") for k in range(20)] + \
          [Sample(f"EO_{k}.jpg", 1, "EO", "pbc") for k in range(20)]
    assert "holds 20 of the 20" in degenerate_grouping(pbc)
    regrouped, note = regroup(pbc, "auto", "pbc")
    assert note.startswith("warning") and len({s.group for s in regrouped}) == 40
    fields = [Sample(f"95-1_{k // 2}_{k % 2}.jpg", k % 2, f"95-1_{k // 2}", "raabin") for k in range(40)]
    assert degenerate_grouping(fields) is None
    assert regroup(fields, "auto", "raabin")[0] == fields
    by_regex, _ = regroup(pbc, r"regex:^(\w\w)_(\d)", "pbc")
    assert {s.group for s in by_regex} == {"BA", "EO"}
    with pytest.raises(WbcnetError, match="does not match"):
        regroup(pbc, r"regex:^zz", "pbc")


def test_sampling_balances_classes_and_labs():
    labels = np.array([0] * 90 + [0] * 10 + [1] * 50)
    sources = np.array([0] * 90 + [1] * 10 + [0] * 50)
    w = sampling_weights(labels, sources).numpy()
    assert np.isclose(w[labels == 0].sum(), w[labels == 1].sum())          # classes even
    assert np.isclose(w[:90].sum() / w[90:100].sum(), 3.0)                   # labs by the root of their cells
    assert np.allclose(w[:90], w[0]) and np.allclose(w[90:100], w[90])       # every cell of a lab alike


def test_a_two_lab_run_splits_within_each_lab_and_reports_each(two_lab_run):
    _, run = two_lab_run
    rows = list(csv.DictReader(open(run / "split.csv")))
    for lab in ("raabin", "other"):
        assert {r["split"] for r in rows if r["source"] == lab} == {"train", "val", "test"}
    other_groups = [r["group"] for r in rows if r["source"] == "other"]
    assert len(set(other_groups)) == len(other_groups)  # PBC-like names: one group per image
    meta = json.loads((run / "best.json").read_text())
    assert [s["name"] for s in meta["sources"]] == ["raabin", "other"]
    assert meta["preprocess"] == {"crop": "none", "context": 1.5} and meta["shift"]["method"] == "mahalanobis"
    summary = list(csv.DictReader(open(run / "test" / "by_source" / "summary.csv")))
    assert [r["set"] for r in summary] == ["other", "raabin"]


def test_a_checkpoint_brings_its_cell_crop_to_predict(cell_crop_checkpoint, tmp_path):
    run = cell_crop_checkpoint
    out = tmp_path / "p.csv"
    paths = sorted(str(p) for p in (FRAMINGS / "bccd").rglob("*.jpg"))
    assert main(["predict", *paths, "--checkpoint", str(run), "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(paths) and all(r["cell_found"] == "yes" for r in rows)
    _, meta = ckpt.load_model(run)
    from wbcnet.data.cache import decode_images
    from wbcnet.cells.preprocess import from_meta

    cropped = decode_images(paths[:1], from_meta(meta), progress=False).images
    whole = decode_images(paths[:1], meta.img_size, progress=False).images
    assert cropped.shape == whole.shape and not np.array_equal(cropped, whole)


def test_evaluate_several_sets_writes_one_table(two_lab_run, tmp_path, capsys):
    root, run = two_lab_run
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(run), "--data", f"raabin={run / 'split.csv'}",
                 "--data", f"other={run / 'split.csv'}", "--data", f"bccd={FRAMINGS / 'bccd'}", "--split", "test",
                 "--out", str(out), "--no-progress", "--no-explain", "--bootstrap", "50"]) == 0
    rows = {r["set"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    split = list(csv.DictReader(open(run / "split.csv")))
    assert int(rows["raabin"]["n"]) == sum(r["split"] == "test" and r["source"] == "raabin" for r in split)
    assert int(rows["bccd"]["n"]) == len(list((FRAMINGS / "bccd").rglob("*.jpg")))
    assert rows["bccd"]["shift_auroc"] and not rows["raabin"]["shift_auroc"]  # measured against the home sets
    assert "| bccd |" in (out / "summary.md").read_text()
    assert 'href="raabin/report.html"' in (out / "report.html").read_text()
    assert (out / "bccd" / "report.html").exists()


def test_unfamiliar_cells_are_flagged_and_home_cells_mostly_not(two_lab_run, tmp_path, capsys):
    root, run = two_lab_run
    pbc_like_copy(SAMPLE, tmp_path / "shifted", per_class=12, transform=shifted)
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path / "shifted"), "--checkpoint", str(run), "--out", str(out),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    rows = list(csv.DictReader(open(out)))
    flagged = np.mean([r["unfamiliar"] == "yes" for r in rows])
    assert flagged > 0.5 and "run `wbcnet adapt`" in err
    assert all(r["predicted"] == "refer" for r in rows if r["unfamiliar"] == "yes")
    assert main(["predict", str(root / "raabin"), "--checkpoint", str(run), "--out", str(out),
                 "--no-progress"]) == 0
    home = np.mean([r["unfamiliar"] == "yes" for r in csv.DictReader(open(out))])
    assert home < 0.1 and home < flagged
    assert main(["predict", str(tmp_path / "shifted"), "--checkpoint", str(run), "--out", str(out),
                 "--no-progress", "--no-shift-check"]) == 0
    assert "unfamiliar" not in open(out).readline()


def test_tta_runs_and_keeps_the_shape(two_lab_run):
    from wbcnet.data.cache import decode_images
    from wbcnet.cells.preprocess import from_meta
    from wbcnet.inference.runner import run_model

    _, run = two_lab_run
    model, meta = ckpt.load_model(run)
    images = decode_images([str(p) for p in sorted((FRAMINGS / "pbc").rglob("*.jpg"))], from_meta(meta),
                           progress=False).images
    plain, tta = run_model(model, meta, images), run_model(model, meta, images, tta=True)
    assert tta.probs.shape == plain.probs.shape and not np.allclose(tta.logits, plain.logits)


# --- adapt (issue 9) ------------------------------------------------------------------------------

def split_copy(src, dest_adapt, dest_test, per_class_adapt):
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.jpg"))
        for dest, chosen in ((dest_adapt, files[:per_class_adapt]), (dest_test, files[per_class_adapt:])):
            (dest / d.name).mkdir(parents=True)
            for p in chosen:
                shutil.copy(p, dest / d.name / p.name)


def test_adapt_helps_on_a_new_lab_and_stops_flagging_it(two_lab_run, tmp_path):
    from wbcnet.lab.adapt import adapt
    from wbcnet.evaluation.evaluate import evaluate_folder

    _, run = two_lab_run
    pbc_like_copy(SAMPLE, tmp_path / "lab", transform=shifted)  # 60 cells a class from a "new lab"
    split_copy(tmp_path / "lab", tmp_path / "adapt", tmp_path / "test", per_class_adapt=20)

    def score(checkpoint, name):
        model, meta = ckpt.load_model(checkpoint)
        return evaluate_folder(model, meta, tmp_path / "test", tmp_path / name, progress=False, explain_maps=False,
                               n_resamples=0)

    before = score(run, "before")
    adapted = adapt(run, tmp_path / "adapt", tmp_path / "adapted", epochs=8, progress=False)
    after = score(adapted, "after")
    assert after.macro_f1 > before.macro_f1 + 0.05
    assert after.shift.share_unfamiliar < min(0.2, before.shift.share_unfamiliar)
    meta = json.loads((adapted / "best.json").read_text())
    assert meta["adapted_from"]["checkpoint"].endswith("best.safetensors") and meta["adapted_from"]["images"]["train"]
    assert meta["calibration"]["n"] > 0  # 20 a class: 4 held out per class refit the temperature


def test_adapt_refuses_other_classes_and_allows_a_subset(two_lab_run, tmp_path, capsys):
    _, run = two_lab_run
    (tmp_path / "mine" / "Blast").mkdir(parents=True)
    shutil.copy(next((SAMPLE / "Monocyte").glob("*.jpg")), tmp_path / "mine" / "Blast" / "x_1_1.jpg")
    assert main(["adapt", "--data", str(tmp_path / "mine"), "--checkpoint", str(run), "--out",
                 str(tmp_path / "a"), "--no-progress"]) == 2
    assert "Blast" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "mine" / "Blast")
    for c in ("Lymphocyte", "Neutrophil"):
        shutil.copytree(SAMPLE / c, tmp_path / "mine" / c, ignore=lambda _, names: sorted(names)[6:])
    assert main(["adapt", "--data", str(tmp_path / "mine"), "--checkpoint", str(run), "--out", str(tmp_path / "a"),
                 "--epochs", "1", "--no-progress"]) == 0
    assert "adapting on 2 of 5 classes" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "best.json").read_text())["classes"] == \
        json.loads((run / "best.json").read_text())["classes"]


def test_unlabelled_adaptation_reestimates_batchnorm_only(two_lab_run, tmp_path, capsys):
    import torch

    _, run = two_lab_run
    pbc_like_copy(SAMPLE, tmp_path / "lab", per_class=30, transform=shifted)
    assert main(["adapt", "--adabn", "--unlabelled", str(tmp_path / "lab"), "--checkpoint", str(run), "--out",
                 str(tmp_path / "u"), "--no-progress"]) == 0
    a, _ = ckpt.read_checkpoint(run)
    b, meta = ckpt.read_checkpoint(tmp_path / "u")
    means = [k for k in b if k.endswith("running_mean")]
    assert means and any(not torch.equal(a[k], b[k]) for k in means) and meta.adapted_from["method"] == "adabn"
    weights = [k for k in b if k.endswith(".weight") and k.startswith("model.")]
    assert all(torch.equal(a.get(k.replace("model.", "ema.", 1), a[k]), b[k]) for k in weights)
