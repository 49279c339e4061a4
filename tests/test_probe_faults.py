"""Issue 21's probe list: a full disk under predict and train, adapt on too few cells, a checkpoint
without its checksum, symlink loops in an input folder. Each failed before its fix.

A full disk is a small tmpfs (mounting one needs root; the tests skip without it)."""
import csv
import json
import os
import shutil
import subprocess

import pytest

from wbcnet.cli.main import main

from conftest import SAMPLE, sample_paths, small_config

CLASSES = sorted(d.name for d in SAMPLE.iterdir() if d.is_dir())


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    last = err[-1]  # "skipped ..." notes may come first; the error is one line, the last
    assert last.startswith("wbcnet ") and ": error: " in last, err
    for n in needles:
        assert n in last, last
    return last


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs; fill(leave) fills it up to `leave` bytes."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder, leave: int) -> None:
    st = os.statvfs(folder)
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def tiny_checkpoint(folder, classes=CLASSES):
    """An untrained tiny mhcnn saved as a checkpoint (seconds, not a training run)."""
    from wbcnet.models.checkpoint import new_meta, save_checkpoint
    from wbcnet.models import create_model

    args = {"img_size": 32, "widths": [8, 8, 16, 16], "heads": 1, "depth": 1}
    model = create_model("mhcnn", num_classes=len(classes), **args)
    meta = new_meta(classes, "mhcnn", args, 32, [0.5] * 3, [0.25] * 3)
    return save_checkpoint(folder / "tiny", model, meta)


# --- a full disk ------------------------------------------------------------------------------------------

def test_predict_on_a_full_disk_keeps_the_earlier_csv(small_disk, tmp_path, capsys):
    out = small_disk / "predictions.csv"
    out.write_text("path,predicted\nearlier.jpg,Monocyte\n")
    fill(small_disk, leave=4096)
    ckpt = tiny_checkpoint(tmp_path)
    assert main(["predict", str(SAMPLE / "Monocyte"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--no-progress"]) == 2
    one_line_error(capsys, str(out), "no space left", "earlier file is unchanged")
    assert out.read_text() == "path,predicted\nearlier.jpg,Monocyte\n"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "predictions.csv"]  # no temporary file left


def test_predict_writes_the_csv_whole(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    ckpt = tiny_checkpoint(tmp_path)
    assert main(["predict", str(SAMPLE / "Monocyte"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(list((SAMPLE / "Monocyte").iterdir())) and rows[0]["predicted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "tiny.json", "tiny.safetensors"]


def test_train_on_a_full_disk_is_one_line_and_leaves_no_folder(small_disk, tmp_path, capsys, tiny_imagefolder):
    config = tmp_path / "small.yaml"
    small_config(tiny_imagefolder, small_disk / "run", epochs=1, model_args={}).to_yaml(config)
    fill(small_disk, leave=16384)  # room for config.yaml and split.csv, none for a checkpoint
    assert main(["train", "--config", str(config)]) == 2
    one_line_error(capsys, "no space left", "run folder was removed")
    assert not (small_disk / "run").exists()


# --- adapt on too few cells -----------------------------------------------------------------------------

def cells(folder, per_class: dict[str, int]):
    for name, n in per_class.items():
        (folder / name).mkdir(parents=True)
        for p in sorted((SAMPLE / name).glob("*.jpg"))[:n]:
            shutil.copy(p, folder / name / p.name)
    return folder


def test_adapt_on_one_cell_per_class_is_one_line_and_makes_no_folder(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path)
    data = cells(tmp_path / "mine", {c: 1 for c in CLASSES})
    assert main(["adapt", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"),
                 "--epochs", "1", "--no-progress"]) == 2
    one_line_error(capsys, "at least 2 of each class")
    assert not (tmp_path / "a").exists()


def test_adapt_on_two_cells_does_not_suggest_a_batch_size(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path)
    data = cells(tmp_path / "mine", {CLASSES[0]: 2})
    assert main(["adapt", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"),
                 "--epochs", "1", "--no-progress"]) == 2
    err = one_line_error(capsys, "label more cells")
    assert "--batch-size" not in err and not (tmp_path / "a").exists()


def test_adapt_shots_of_one_cell_are_refused_first(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path)
    assert main(["adapt", "--data", str(SAMPLE), "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"),
                 "--shots", "1,5", "--no-progress"]) == 2
    one_line_error(capsys, "--shots")
    assert not (tmp_path / "a").exists()


# --- a checkpoint without its checksum -------------------------------------------------------------------

def test_a_checkpoint_without_its_checksum_is_refused(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path)
    info = ckpt.with_suffix(".json")
    meta = json.loads(info.read_text())
    del meta["weights_sha256"]
    meta["classes"] = meta["classes"][::-1]  # what the probe did: the names no longer fit the weights
    info.write_text(json.dumps(meta))
    out = tmp_path / "p.csv"
    assert main(["predict", str(sample_paths(1)[0]), "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    one_line_error(capsys, "weights_sha256", "refused")
    assert not out.exists()


# --- symlink loops in an input folder ---------------------------------------------------------------------

def test_symlink_loops_are_named_like_hidden_files(tmp_path, capsys):
    from wbcnet.data.scan import scan_folder
    from wbcnet.inference.predict import expand_inputs

    data = cells(tmp_path / "data", {CLASSES[0]: 2, CLASSES[1]: 2})
    os.symlink("loop.jpg", data / CLASSES[0] / "loop.jpg")  # a link to itself
    os.symlink("..", data / CLASSES[0] / "up")                  # a link to the folder above
    os.symlink("gone.jpg", data / CLASSES[1] / "broken.jpg")
    paths, skipped = expand_inputs([str(data)])
    reasons = {os.path.basename(p): why for p, why in skipped}
    assert len(paths) == 4
    assert "symlink loop" in reasons["loop.jpg"] and "symlink loop" in reasons["up"]
    assert "broken symlink" in reasons["broken.jpg"]
    found = scan_folder(data)
    assert len(found.samples) == 4 and {os.path.basename(p) for p, _ in found.skipped} == {"loop.jpg", "up",
                                                                                           "broken.jpg"}
    ckpt = tiny_checkpoint(tmp_path)
    assert main(["predict", str(data), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.csv"),
                 "--no-progress"]) == 0
    assert "loop.jpg: symlink loop" in capsys.readouterr().err
