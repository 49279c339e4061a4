"""Checkpoint round trip, resume, and training refusing bad input."""
import json

import pytest
import torch

from wbcnet.models import checkpoint as ckpt
from wbcnet.core.errors import WbcnetError
from wbcnet.models import create_model
from wbcnet.training.classifier import fit

from conftest import small_config


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("mhcnn", num_classes=3, img_size=64).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    meta = ckpt.new_meta(["a", "b", "c"], "mhcnn", {"img_size": 64}, 64, [0.5] * 3, [0.2] * 3)
    ckpt.save_checkpoint(tmp_path / "m", model, meta, optimizer=opt)
    loaded, lmeta = ckpt.load_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), loaded(x))
    assert lmeta.classes == ["a", "b", "c"]
    tensors, saved = ckpt.read_checkpoint(tmp_path / "m")
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt.optimizer_from_parts(opt2, tensors, saved.optimizer)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave nothing behind


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(WbcnetError, match="not found"):
        ckpt.read_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    (tmp_path / "bad.json").write_text(json.dumps({"classes": ["a"], "model": "mhcnn", "img_size": 64,
                                                   "mean": [0.5] * 3, "std": [0.2] * 3, "model_args": {}}))
    with pytest.raises(WbcnetError, match="bad.safetensors"):
        ckpt.read_checkpoint(tmp_path / "bad.safetensors")


def test_resume_reproduces_an_uninterrupted_run(tiny_imagefolder, tmp_path):
    straight = fit(small_config(tiny_imagefolder, tmp_path / "straight"))

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, row):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(small_config(tiny_imagefolder, tmp_path / "resumed"), on_epoch_end=stop_after_first)
    assert not (tmp_path / "resumed" / "DONE").exists()
    resumed = fit(None, resume=tmp_path / "resumed")
    a, _ = ckpt.read_checkpoint(straight / "last.safetensors")
    b, _ = ckpt.read_checkpoint(resumed / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = (resumed / "metrics.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    assert (resumed / "split.csv").read_text() == (straight / "split.csv").read_text()
    assert json.loads((resumed / "test" / "metrics.json").read_text())["n"] > 0


def test_a_run_folder_is_never_overwritten(tiny_imagefolder, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(WbcnetError, match="holds a run"):
        fit(small_config(tiny_imagefolder, tmp_path / "run"))
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_a_requested_class_without_images_is_an_error(tiny_imagefolder, tmp_path):
    (tiny_imagefolder / "Blast").mkdir()
    with pytest.raises(WbcnetError, match="Blast"):
        fit(small_config(tiny_imagefolder, tmp_path / "run"))


@pytest.mark.parametrize("balance", ["sampler", "none"])
def test_balance_options_train(tiny_imagefolder, tmp_path, balance):
    run = fit(small_config(tiny_imagefolder, tmp_path / balance, epochs=1, balance=balance, optimizer="sgd"))
    assert (run / "best.safetensors").exists()


def test_a_rotated_copy_never_lands_on_the_other_side_of_the_split(tiny_imagefolder, tmp_path):
    from PIL import Image

    from wbcnet.data.split import read_split

    originals = sorted((tiny_imagefolder / "Neutrophil").glob("*.jpg"))
    for k, p in enumerate(originals):  # each cell again, turned, under another field-of-view name
        Image.open(p).rotate(90 + 17 * k).save(p.parent / f"copy{k}_1_1.jpg", quality=92)
    run = fit(small_config(tiny_imagefolder, tmp_path / "run", epochs=1))
    split = read_split(run / "split.csv", ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"])
    side = {s.path.split("/")[-1]: name for name, items in split.items() for s in items}
    for k, p in enumerate(originals):
        assert side[p.name] == side[f"copy{k}_1_1.jpg"], p.name
