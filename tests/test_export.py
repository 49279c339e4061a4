"""ONNX export and the onnxruntime predict backend, on a small untrained model (seconds)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from wbcnet.models.checkpoint import load_model, new_meta, save_checkpoint
from wbcnet.core.errors import WbcnetError
from wbcnet.inference.runner import predict_logits
from wbcnet.inference.export import export_onnx, onnx_backend
from wbcnet.models import create_model  # noqa: E402
from wbcnet.inference.predict import expand_inputs, predict_paths

from conftest import SAMPLE  # noqa: E402

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def make_checkpoint(folder, name="mhcnn", size=64, seed=0):
    """An untrained model saved the way training saves one: enough to test the export path."""
    torch.manual_seed(seed)
    args = {"img_size": size} if name in ("mhcnn", "seed-mhcnn") else {}
    model = create_model(name, num_classes=len(CLASSES), **args)
    meta = new_meta(CLASSES, name, args, size, [0.68, 0.62, 0.70], [0.18, 0.21, 0.17])
    return save_checkpoint(folder / "best", model, meta)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("export"))
    onnx_path, diff = export_onnx(ckpt)
    return ckpt, onnx_path, diff


def test_export_writes_beside_the_checkpoint_and_matches_torch(exported):
    ckpt, onnx_path, diff = exported
    assert onnx_path == ckpt.with_suffix(".onnx") and onnx_path.is_file()
    assert diff < 1e-3
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["preprocess"]) == {"crop": "none"}  # what a non-wbcnet runtime must do first


def test_onnx_backend_predicts_the_same_classes_as_torch(exported):
    ckpt, onnx_path, _ = exported
    model, meta = load_model(ckpt)
    paths, _ = expand_inputs([str(SAMPLE)])
    onnx_rows = predict_paths(model, meta, paths, backend=onnx_backend(onnx_path, meta, batch_size=32),
                              progress=False)
    # The torch backend in fp32: on a CPU with bf16 the default path autocasts, and an untrained
    # model's near-tied logits can then flip; the ONNX graph is fp32.
    torch_fp32 = lambda images: predict_logits(model, images, meta.mean, meta.std, 64, bf16=False)  # noqa: E731
    torch_rows = predict_paths(model, meta, paths, backend=torch_fp32, progress=False)
    assert len(onnx_rows) == len(paths) == 300
    assert [r["predicted"] for r in onnx_rows] == [r["predicted"] for r in torch_rows]
    np.testing.assert_allclose([float(r["confidence"]) for r in onnx_rows],
                               [float(r["confidence"]) for r in torch_rows], atol=2e-4)


def test_onnx_backend_errors_are_one_line(exported, tmp_path):
    ckpt, onnx_path, _ = exported
    _, meta = load_model(ckpt)
    with pytest.raises(WbcnetError, match="wbcnet export --format onnx"):
        onnx_backend(tmp_path / "missing.onnx", meta)
    retrained = make_checkpoint(tmp_path, seed=1)  # new weights, the old export would be stale
    _, new_meta = load_model(retrained)
    with pytest.raises(WbcnetError, match="other weights"):
        onnx_backend(onnx_path, new_meta)
    with pytest.raises(WbcnetError, match="px"):
        onnx_backend(onnx_path, dataclasses.replace(meta, img_size=96))


@pytest.mark.parametrize("name,size", [pytest.param("seed-mhcnn", 120, marks=pytest.mark.slow), ("resnet18", 64)])
def test_other_models_export(tmp_path, name, size):
    _, diff = export_onnx(make_checkpoint(tmp_path, name, size), out=tmp_path / "m.onnx", batch_size_check=4)
    assert diff < 1e-3
