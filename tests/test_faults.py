"""Faults that must never lose or corrupt work, and user errors that must read as one line.

Each test here failed before the fix it guards (issue 7's probe list)."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from wbcnet.models import checkpoint as ckpt
from wbcnet.cli.main import main
from wbcnet.training.config import TrainConfig
from wbcnet.core.errors import WbcnetError
from wbcnet.training.classifier import fit

from conftest import REPO, SAMPLE, folder_state, sample_paths, small_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    for d in sorted(SAMPLE.iterdir()):
        if d.is_dir():
            shutil.copytree(d, data / d.name, ignore=lambda _, names: sorted(names)[10:])
    run = fit(small_config(data, tmp_path_factory.mktemp("runs") / "run", epochs=2))
    return data, run


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# --- resume never destroys a run -------------------------------------------------------------

def test_resume_without_last_checkpoint_refuses_and_changes_nothing(finished_run, tmp_path, capsys):
    _, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "DONE").unlink()
    (copy / "last.safetensors").unlink()
    before = folder_state(copy)
    assert main(["train", "--resume", str(copy)]) == 2
    one_line_error(capsys, "last.safetensors is missing")
    assert folder_state(copy) == before


def test_resume_with_unparsable_config_is_one_line(finished_run, tmp_path, capsys):
    _, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "DONE").unlink()
    (copy / "config.yaml").write_text("epochs: [3\n")
    before = folder_state(copy)
    assert main(["train", "--resume", str(copy)]) == 2
    one_line_error(capsys, "config.yaml", "not valid YAML")
    assert folder_state(copy) == before


def test_resume_after_a_class_folder_was_removed_is_one_line(tmp_path, capsys, tiny_imagefolder):
    class Stop(Exception):
        pass

    def stop(epoch, row):
        raise Stop

    with pytest.raises(Stop):
        fit(small_config(tiny_imagefolder, tmp_path / "run"), on_epoch_end=stop)
    shutil.rmtree(tiny_imagefolder / "Monocyte")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "Monocyte")


def test_resume_after_a_kill_in_mid_epoch_matches_an_uninterrupted_run(tiny_imagefolder, tmp_path, monkeypatch):
    from wbcnet.training import classifier as train_module

    straight = fit(small_config(tiny_imagefolder, tmp_path / "straight"))
    real_step, calls = train_module.train_step, {"n": 0}

    def dies_in_the_second_epoch(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # 4 batches an epoch: the second batch of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    monkeypatch.setattr(train_module, "train_step", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(small_config(tiny_imagefolder, tmp_path / "killed"))
    monkeypatch.setattr(train_module, "train_step", real_step)
    resumed = fit(None, resume=tmp_path / "killed")
    a, _ = ckpt.read_checkpoint(straight / "last.safetensors")
    b, _ = ckpt.read_checkpoint(resumed / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_does_not_change_the_callers_config(tiny_imagefolder, tmp_path):
    cfg = small_config(tiny_imagefolder, tmp_path / "run", epochs=1, img_size=None)
    before = cfg.to_dict()
    fit(cfg)
    assert cfg.to_dict() == before


def test_resume_names_the_flags_it_ignores(finished_run, tmp_path, capsys):
    _, run = finished_run
    assert main(["train", "--resume", str(run), "--epochs", "9", "--lr", "0.1"]) == 2  # finished: nothing to do
    err = capsys.readouterr().err
    assert "ignoring --epochs, --lr" in err and "finished already" in err


# --- a new run: its folder ----------------------------------------------------------------------

def test_a_failed_start_leaves_no_folder_and_the_same_out_works_after(tiny_imagefolder, tmp_path):
    (tiny_imagefolder / "Basophil" / "extra").mkdir()
    with pytest.raises(WbcnetError):
        fit(small_config(tiny_imagefolder, tmp_path / "run", batch_size=1000))
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("left by a crash\n")  # preliminary files only: reusable
    assert (fit(small_config(tiny_imagefolder, tmp_path / "run", epochs=1)) / "DONE").exists()


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "run").write_text("x")
    assert main(["train", "--data", str(SAMPLE), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    one_line_error(capsys, "is a file")
    assert (tmp_path / "run").read_text() == "x"


# --- checkpoints --------------------------------------------------------------------------------

def test_flipped_bytes_in_the_weights_are_caught(finished_run, tmp_path, capsys):
    _, run = finished_run
    shutil.copy(run / "best.safetensors", tmp_path / "m.safetensors")
    shutil.copy(run / "best.json", tmp_path / "m.json")
    raw = bytearray((tmp_path / "m.safetensors").read_bytes())
    raw[-100] ^= 0xFF  # inside the tensor data, not the header
    (tmp_path / "m.safetensors").write_bytes(bytes(raw))
    with pytest.raises(WbcnetError, match="checksum"):
        ckpt.load_model(tmp_path / "m.safetensors")
    assert main(["predict", str(sample_paths(1)[0]), "--checkpoint", str(tmp_path / "m.safetensors")]) == 2
    one_line_error(capsys, "checksum")


def test_new_weights_beside_old_metadata_are_caught(finished_run, tmp_path):
    _, run = finished_run
    shutil.copy(run / "best.json", tmp_path / "m.json")  # best and last differ: other weights
    shutil.copy(run / "last.safetensors", tmp_path / "m.safetensors")
    with pytest.raises(WbcnetError, match="do not match"):
        ckpt.load_model(tmp_path / "m")


def test_metadata_for_another_model_shape_is_one_line(finished_run, tmp_path, capsys):
    _, run = finished_run
    shutil.copy(run / "best.safetensors", tmp_path / "m.safetensors")
    meta = json.loads((run / "best.json").read_text())
    meta["model_args"]["widths"] = [8, 16, 32, 64]
    (tmp_path / "m.json").write_text(json.dumps(meta))
    assert main(["predict", str(sample_paths(1)[0]), "--checkpoint", str(tmp_path / "m")]) == 2
    one_line_error(capsys, "do not fit the model")


def test_checkpoints_store_every_constructor_argument(finished_run):
    _, run = finished_run
    args = json.loads((run / "best.json").read_text())["model_args"]
    assert {"widths", "depth", "heads", "mlp_ratio", "dropout", "attn_dropout", "image_norm", "img_size"} <= set(args)


def test_pickles_are_refused_as_pretrained_weights(tmp_path, capsys):
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    assert main(["train", "--data", str(SAMPLE), "--out", str(tmp_path / "run"), "--pretrained",
                 str(tmp_path / "weights.pt"), "--no-progress", "--no-cache", "--epochs", "1",
                 "--no-merge-near-duplicates"]) == 2
    one_line_error(capsys, "never unpickles")


def test_export_that_fails_its_check_leaves_no_file(finished_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from wbcnet.inference import export

    _, run = finished_run
    monkeypatch.setattr(export, "TOLERANCE", 0.0)  # nothing passes
    with pytest.raises(WbcnetError, match="not written"):
        export.export_onnx(run, tmp_path / "m.onnx", batch_size_check=2)
    assert list(tmp_path.iterdir()) == []


# --- data -----------------------------------------------------------------------------------------

def test_manifest_paths_are_relative_to_the_manifest_only(tmp_path, monkeypatch):
    from wbcnet.data.scan import scan_csv

    (tmp_path / "data").mkdir()
    shutil.copy(sample_paths(1)[0], tmp_path / "data" / "a_1_1.jpg")
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text("path,label\ndata/a_1_1.jpg,X\n../data/a_1_1.jpg,X\n")
    monkeypatch.chdir(tmp_path)  # data/a_1_1.jpg exists from here, but not beside the manifest
    paths = [s.path for s in scan_csv(manifest).samples]
    assert paths == [str(tmp_path / "lists" / "data" / "a_1_1.jpg"), str(tmp_path / "data" / "a_1_1.jpg")]


def test_a_runs_split_csv_works_from_any_folder(finished_run, tmp_path, monkeypatch, capsys):
    _, run = finished_run
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--data", str(run / "split.csv"), "--split", "test", "--checkpoint", str(run),
                 "--out", str(tmp_path / "ev"), "--no-progress", "--no-explain", "--bootstrap", "0"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == \
        json.loads((run / "test" / "metrics.json").read_text())["n"]


@pytest.mark.parametrize("text,needle", [
    ("path,label\n", "no rows"),
    ("path,label\nx_1_1.jpg,\n", "line 2: no label"),
    ("file,kind\nx.jpg,A\n", "'path' and 'label'"),
])
def test_bad_manifests_are_one_line(tmp_path, capsys, text, needle):
    (tmp_path / "m.csv").write_text(text)
    assert main(["train", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    one_line_error(capsys, needle)


def test_a_manifest_with_a_byte_order_mark_reads(tmp_path):
    from wbcnet.data.scan import scan_csv

    shutil.copy(sample_paths(1)[0], tmp_path / "a_1_1.jpg")
    (tmp_path / "m.csv").write_bytes("\ufeffpath,label\na_1_1.jpg,Basophil\n".encode("utf-8"))
    assert len(scan_csv(tmp_path / "m.csv").samples) == 1


def test_too_few_images_to_split_is_one_line(tmp_path, capsys):
    for d in sorted(SAMPLE.iterdir()):
        if d.is_dir():
            (tmp_path / "data" / d.name).mkdir(parents=True)
            for p in sorted(d.glob("*.jpg"))[:2]:
                shutil.copy(p, tmp_path / "data" / d.name / p.name)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--no-progress",
                 "--no-cache"]) == 2
    one_line_error(capsys, "too few images")


def test_one_class_is_one_line(tmp_path, capsys):
    shutil.copytree(SAMPLE / "Basophil", tmp_path / "data" / "Basophil")
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    one_line_error(capsys, "only one class")


def test_a_dollar_in_a_class_name_is_drawn_as_text(tmp_path):
    for d, name in (("Basophil", "Baso $1"), ("Lymphocyte", "Lympho$")):
        shutil.copytree(SAMPLE / d, tmp_path / "data" / name, ignore=lambda _, names: sorted(names)[12:])
    run = fit(small_config(tmp_path / "data", tmp_path / "run", epochs=1, merge_near_duplicates=False))
    assert (run / "test" / "confusion_matrix.png").exists() and (run / "DONE").exists()


def test_a_corrupt_cache_entry_is_named_and_rebuilt(tmp_path, capsys):
    from wbcnet.data.cache import cached_decode

    paths = [str(p) for p in sample_paths(1)]
    first = cached_decode(paths, 32, tmp_path / "cache", progress=False)
    entry = next((tmp_path / "cache").glob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:200])  # cut short
    again = cached_decode(paths, 32, tmp_path / "cache", progress=False)
    assert str(entry) in capsys.readouterr().err
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))
    assert np.array_equal(np.asarray(cached_decode(paths, 32, tmp_path / "cache", progress=False).images),
                          np.asarray(first.images))  # and the rebuilt entry reads back


# --- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,needle", [("balance", "samplr", "sampler, weighted_loss, none"),
                                              ("val_frac", 0.9, "val_frac"), ("epochs", 0, "epochs"),
                                              ("optimizer", "adam", "adamw, sgd")])
def test_config_values_are_checked(key, value, needle):
    with pytest.raises(WbcnetError, match=needle):
        TrainConfig.from_dict({key: value})


def test_train_help_shows_every_config_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--label-smoothing" in out and "--weight-decay" in out and "(default: 0.1)" in out
    assert "class-weighted loss (default)" not in out and "(default: sampler)" in out


# --- outputs ----------------------------------------------------------------------------------------

def test_evaluate_and_audit_refuse_a_folder_with_files_unless_overwrite(finished_run, tmp_path, capsys):
    data, run = finished_run
    out = tmp_path / "ev"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(run), "--out", str(out), "--no-progress"]) == 2
    one_line_error(capsys, "--overwrite")
    assert main(["data", "audit", str(data), "--out", str(out), "--no-progress"]) == 2
    one_line_error(capsys, "--overwrite")
    assert (out / "keep.txt").exists()
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(run), "--out", str(out), "--no-progress",
                 "--overwrite", "--no-explain", "--bootstrap", "0"]) == 0
    assert not (out / "keep.txt").exists() and (out / "metrics.json").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "audit"])
def test_read_only_outputs_fail_first_as_one_line(finished_run, readonly_dir, capsys, command):
    data, run = finished_run
    out = readonly_dir / "out"
    argv = {"train": ["train", "--data", str(data), "--out", str(out)],
            "evaluate": ["evaluate", "--data", str(data), "--checkpoint", str(run), "--out", str(out)],
            "predict": ["predict", str(data), "--checkpoint", str(run), "--out", str(out / "p.csv")],
            "audit": ["data", "audit", str(data), "--out", str(out)]}[command]
    assert main(argv + ["--no-progress"]) == 2
    err = one_line_error(capsys, str(readonly_dir))
    assert "cannot write" in err


def test_a_read_only_cache_folder_falls_back_to_memory(readonly_dir, capsys):
    from wbcnet.data.cache import cached_decode

    decoded = cached_decode([str(p) for p in sample_paths(1)], 32, readonly_dir / "cache", progress=False)
    assert len(decoded.images) == 5 and "cannot write the decode cache" in capsys.readouterr().err


def test_predict_exits_non_zero_when_nothing_was_classified(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.jpg"), "--no-progress"]) == 2
    one_line_error(capsys, "no images to classify")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert main(["predict", str(tmp_path / "bad.jpg"), "--no-progress", "--out", str(tmp_path / "p.csv")]) == 1
    assert list(csv.DictReader(open(tmp_path / "p.csv")))[0]["error"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(WbcnetError):
        main(["--debug", "predict", str(tmp_path / "nope.jpg")])


# --- balance options actually change training ------------------------------------------------------

def test_sampler_balances_batches_and_none_does_not():
    from wbcnet.training.classifier import epoch_order

    labels = np.array([0] * 90 + [1] * 10)
    g = torch.Generator().manual_seed(0)
    drawn = labels[epoch_order(labels, "sampler", g).numpy()]
    assert 0.35 < drawn.mean() < 0.65  # about half class 1, against 10% in the data
    assert sorted(epoch_order(labels, "none", g).tolist()) == list(range(100))


def test_weighted_loss_weights_the_criterion(tiny_imagefolder, tmp_path, monkeypatch):
    seen = []
    real = torch.nn.CrossEntropyLoss

    def spy(*args, **kw):
        seen.append(kw.get("weight"))
        return real(*args, **kw)

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", spy)
    (tiny_imagefolder / "Basophil" / "x").mkdir()
    for p in sorted((tiny_imagefolder / "Basophil").glob("*.jpg"))[4:]:
        p.unlink()  # fewer basophils: their weight must be the largest
    fit(small_config(tiny_imagefolder, tmp_path / "run", epochs=1, balance="weighted_loss"))
    weight = seen[0]
    assert weight is not None and int(weight.argmax()) == 0 and float(weight[0]) > float(weight[1])


# --- one way through the code --------------------------------------------------------------------------

def test_predict_imports_neither_sklearn_nor_matplotlib_nor_timm():
    code = ("import sys, wbcnet.inference.predict, wbcnet.models.checkpoint; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'matplotlib', 'timm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", ["wbcnet.models.checkpoint", "wbcnet.models", "wbcnet.core.weights", "wbcnet.inference.runner"])
def test_core_modules_import_on_their_own(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=REPO, env=dict(os.environ))
