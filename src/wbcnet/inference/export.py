"""Checkpoint -> ONNX file, and an ONNX Runtime backend for `predict_paths`.

The exported graph takes what `predict_paths` hands a backend: uint8 RGB images (N, 3, S, S),
batch size free. Normalisation ((x / 255 - mean) / std) is folded into the graph, so the file is
self-contained: any ONNX runtime can use it with no wbcnet code and no mean/std to copy around.
The output is raw logits (N, C); softmax with the checkpoint's temperature stays in wbcnet, as for
the PyTorch backend. The class names, image size, mean, std, temperature, the preprocessing the
images need first (cell crop, stain) and a hash of the weights it came from are stored in the
file's metadata.

Export uses the TorchScript exporter (`dynamo=False`): in torch 2.14 the torch.export-based
exporter writes opset 18 and fails to convert this graph down to opset 17, the opset every
onnxruntime >= 1.17 runs. The graph is traced at a fixed image size; the tracer's warnings about
shape checks (mhcnn's positional-embedding resize, the q/k/v split) are expected and silenced.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.errors import WbcnetError
from ..core.files import ASSETS, atomic_write
from ..core.weights import sha256_file

SAMPLE = ASSETS / "sample"
TOLERANCE = 1e-3  # max |logit difference| between onnxruntime and PyTorch fp32 we accept as "same model"


class OnnxRuntimeMissing(ImportError, WbcnetError):
    """onnxruntime is not installed. Also a WbcnetError, so the CLI prints it as one line."""


class NormalizedModel(torch.nn.Module):
    """uint8 images in, logits out: x * 1/(255 std) - mean/std, then the model."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, images):
        return self.model(images.float() * self.scale - self.shift)


def sample_images(n: int, size: int) -> np.ndarray:
    """`n` of the bundled sample cells, taken in turn from each class folder, as uint8 (n, 3, S, S)."""
    from ..data.cache import decode_images

    per_class = [sorted(d.glob("*.jpg")) for d in sorted(SAMPLE.iterdir()) if d.is_dir()]
    paths = [str(files[i]) for i in range(max(map(len, per_class))) for files in per_class if i < len(files)][:n]
    return decode_images(paths, size, progress=False).images


def _onnx_metadata(meta, weights_sha256: str) -> dict[str, str]:
    from .. import __version__

    return {"wbcnet_version": __version__, "model": meta.model, "classes": json.dumps(meta.classes),
            "img_size": str(meta.img_size), "mean": json.dumps(meta.mean), "std": json.dumps(meta.std),
            "temperature": str(meta.temperature), "weights_sha256": weights_sha256,
            # what must happen to a picture before the graph (wbcnet.cells.preprocess): the cell crop, the stain
            "preprocess": json.dumps({"crop": "none", **meta.preprocess}),
            "input": "uint8 RGB images (N, 3, S, S), 0-255, after `preprocess`; normalisation is inside the graph",
            "output": "logits (N, C); probabilities = softmax(logits / temperature)"}


def _session(onnx_path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxRuntimeMissing("onnxruntime is not installed: pip install wbcnet[onnx]") from None
    opts = ort.SessionOptions()
    # Use every core we may run on; one inference at a time, so no inter-op parallelism.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    opts.intra_op_num_threads = threads or cores
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def _run_batches(session, images: np.ndarray, batch_size: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: np.ascontiguousarray(images[i:i + batch_size])})[0]
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, 0), dtype=np.float32)


def default_onnx_path(checkpoint: Path) -> Path:
    """Where an export goes without --out: beside a run's checkpoint, or for a model of the zoo
    (inside the installed package, never written to) NAME.onnx in the current folder."""
    from ..models.zoo import zoo_name

    name = zoo_name(checkpoint)
    return Path(f"{name}.onnx") if name else Path(checkpoint).with_suffix(".onnx")


def export_onnx(checkpoint=None, out=None, opset: int = 17, batch_size_check: int = 8) -> tuple[Path, float]:
    """Export a checkpoint (default: the shipped model) to fp32 ONNX with uint8 input and a dynamic
    batch axis; written to `out` or beside the checkpoint as <stem>.onnx, only once it has passed
    the check below.

    Checks onnxruntime against PyTorch fp32 on `batch_size_check` bundled sample cells (as one
    batch, and the first alone, so a batch size other than the traced one is exercised).
    Returns (ONNX path, max |logit difference|) and prints both.
    """
    import onnx

    from ..models.checkpoint import load_model
    from .runner import predict_logits

    model, meta = load_model(checkpoint)
    model = model.float().eval()
    out = Path(out) if out else default_onnx_path(meta.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta.img_size)
    images = sample_images(max(1, batch_size_check), size)

    wrapped = NormalizedModel(model, meta.mean, meta.std).eval()
    reference = predict_logits(model, images, meta.mean, meta.std, batch_size=len(images), bf16=False,
                               channels_last=False)
    # Checked under its temporary name: a file that fails the check is never where predict looks.
    with atomic_write(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)  # "legacy exporter": chosen on purpose, see top
            torch.onnx.export(wrapped, (torch.from_numpy(images[:2]),), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, _onnx_metadata(meta, sha256_file(meta.path)))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = _session(tmp)
        diff = max(float(np.abs(_run_batches(session, images, len(images)) - reference).max()),
                   float(np.abs(_run_batches(session, images[:1], 1) - reference[:1]).max()))
        if not diff < TOLERANCE:
            raise WbcnetError(f"{out}: not written: ONNX Runtime and PyTorch disagree on {len(images)} sample cells "
                              f"(max |logit diff| {diff:.2e} >= {TOLERANCE:g})")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {opset}, input uint8 N x 3 x {size} x {size}); "
          f"onnxruntime vs PyTorch fp32 on {len(images)} sample cells: max |logit diff| {diff:.2e} (ok)")
    return out, diff


def onnx_backend(onnx_path, meta, batch_size: int = 64, threads: int | None = None):
    """A `predict_paths` backend: uint8 (N, 3, S, S) numpy -> float32 logits (N, C) with onnxruntime.

    Refuses a file made for another image size or class list, or from other weights than the
    checkpoint in `meta` (a stale export beside a retrained checkpoint)."""
    path = Path(onnx_path)
    if not path.is_file():
        raise WbcnetError(f"{path}: no ONNX model here; run wbcnet export --format onnx first")
    session = _session(path, threads)
    shape = session.get_inputs()[0].shape
    if shape[2:] != [meta.img_size] * 2:
        raise WbcnetError(f"{path}: takes {shape[2]}x{shape[3]} images but the checkpoint is {meta.img_size} px; "
                         f"run wbcnet export --format onnx again")
    props = session.get_modelmeta().custom_metadata_map
    if "classes" in props and json.loads(props["classes"]) != list(meta.classes):
        raise WbcnetError(f"{path}: classes {json.loads(props['classes'])} differ from the checkpoint's "
                         f"{meta.classes}; run wbcnet export --format onnx again")
    ckpt_path = meta.path
    if "weights_sha256" in props and ckpt_path and Path(ckpt_path).is_file() \
            and props["weights_sha256"] != sha256_file(ckpt_path):
        raise WbcnetError(f"{path}: exported from other weights than {ckpt_path}; run wbcnet export --format onnx again")
    if session.get_inputs()[0].type != "tensor(uint8)":
        raise WbcnetError(f"{path}: input is {session.get_inputs()[0].type}, not uint8 images; export it with wbcnet")

    def backend(images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, len(meta.classes)), dtype=np.float32)
        return _run_batches(session, images, batch_size)

    return backend
