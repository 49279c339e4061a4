import pytest
import torch

from wbcnet.models import create_model, list_models
from wbcnet.core.errors import WbcnetError

REFERENCE_PARAMS = 40_464_053


def test_seed_model_matches_the_reference_parameter_count():
    m = create_model("seed-mhcnn", num_classes=5)
    n = sum(p.numel() for p in m.parameters())
    bn_stats = sum(b.numel() for name, b in m.named_buffers() if "running" in name)
    assert abs(n - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.01
    assert n + bn_stats == REFERENCE_PARAMS  # Keras counts BatchNorm's moving statistics too


def test_mhcnn_is_small():
    m = create_model("mhcnn", num_classes=5)
    assert sum(p.numel() for p in m.parameters()) <= 5_000_000


@pytest.mark.parametrize("name,size", [("mhcnn", 112), ("mhcnn", 96), ("seed-mhcnn", 120), ("resnet18", 64),
                                       ("convnext_atto", 64)])
def test_forward_and_backward(name, size):
    torch.manual_seed(0)
    kw = {"img_size": size} if name in list_models() else {}
    m = create_model(name, num_classes=5, **kw)
    x = torch.randn(2, 3, size, size)
    y = m(x)
    assert y.shape == (2, 5)
    y.sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_mhcnn_attention_map_is_a_distribution():
    m = create_model("mhcnn", num_classes=5, img_size=112).eval()
    _, attn = m.forward_with_attention(torch.randn(2, 3, 112, 112))
    assert attn.shape == (2, 7, 7)
    assert torch.allclose(attn.sum((1, 2)), torch.ones(2), atol=1e-5)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(WbcnetError, match="unknown model"):
        create_model("no-such-net")


def test_pretrained_must_be_a_local_file(tmp_path):
    with pytest.raises(WbcnetError, match="never downloads"):
        create_model("resnet18", num_classes=5, pretrained=tmp_path / "missing.safetensors")


def test_pretrained_loads_matching_layers(tmp_path):
    from safetensors.torch import save_file

    src = create_model("resnet18", num_classes=1000)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    m = create_model("resnet18", num_classes=5, pretrained=tmp_path / "r18.safetensors")
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    assert m.fc.weight.shape == (5, 512)


def test_image_norm_makes_mhcnn_blind_to_a_global_colour_cast():
    torch.manual_seed(0)
    m = create_model("mhcnn", num_classes=5, img_size=64).eval()  # image_norm is the default
    x = torch.rand(2, 3, 64, 64)
    cast = x * torch.tensor([0.7, 1.1, 1.3]).view(1, 3, 1, 1) + torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)
    assert torch.allclose(m(x), m(cast), atol=1e-3)
    plain = create_model("mhcnn", num_classes=5, img_size=64, image_norm=False).eval()
    assert not torch.allclose(plain(x), plain(cast), atol=1e-3)


# --- mhcnn's norm: batch (default, the shipped checkpoint's), group or layer --------------------

# mhcnn's state-dict keys before `norm` existed: checkpoints written then, the shipped one included,
# must keep loading strictly into norm="batch".
NORM_LAYERS = ["stem.0.1", "stem.1.1", "stages.0.conv1.1", "stages.0.conv2.1", "stages.0.skip.1",
               "stages.1.conv1.1", "stages.1.conv2.1", "stages.1.skip.1"]
MHCNN_KEYS_BEFORE_NORM = [
    "pos", "stem.0.0.weight", "stem.0.1.weight", "stem.0.1.bias", "stem.0.1.running_mean", "stem.0.1.running_var",
    "stem.0.1.num_batches_tracked", "stem.1.0.weight", "stem.1.1.weight", "stem.1.1.bias", "stem.1.1.running_mean",
    "stem.1.1.running_var", "stem.1.1.num_batches_tracked", "stages.0.conv1.0.weight", "stages.0.conv1.1.weight",
    "stages.0.conv1.1.bias", "stages.0.conv1.1.running_mean", "stages.0.conv1.1.running_var",
    "stages.0.conv1.1.num_batches_tracked", "stages.0.conv2.0.weight", "stages.0.conv2.1.weight",
    "stages.0.conv2.1.bias", "stages.0.conv2.1.running_mean", "stages.0.conv2.1.running_var",
    "stages.0.conv2.1.num_batches_tracked", "stages.0.skip.0.weight", "stages.0.skip.1.weight", "stages.0.skip.1.bias",
    "stages.0.skip.1.running_mean", "stages.0.skip.1.running_var", "stages.0.skip.1.num_batches_tracked",
    "stages.1.conv1.0.weight", "stages.1.conv1.1.weight", "stages.1.conv1.1.bias", "stages.1.conv1.1.running_mean",
    "stages.1.conv1.1.running_var", "stages.1.conv1.1.num_batches_tracked", "stages.1.conv2.0.weight",
    "stages.1.conv2.1.weight", "stages.1.conv2.1.bias", "stages.1.conv2.1.running_mean", "stages.1.conv2.1.running_var",
    "stages.1.conv2.1.num_batches_tracked", "stages.1.skip.0.weight", "stages.1.skip.1.weight", "stages.1.skip.1.bias",
    "stages.1.skip.1.running_mean", "stages.1.skip.1.running_var", "stages.1.skip.1.num_batches_tracked",
    "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.qkv.weight", "blocks.0.qkv.bias", "blocks.0.proj.weight",
    "blocks.0.proj.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias", "blocks.0.mlp.0.weight", "blocks.0.mlp.0.bias",
    "blocks.0.mlp.2.weight", "blocks.0.mlp.2.bias", "blocks.1.norm1.weight", "blocks.1.norm1.bias",
    "blocks.1.qkv.weight", "blocks.1.qkv.bias", "blocks.1.proj.weight", "blocks.1.proj.bias", "blocks.1.norm2.weight",
    "blocks.1.norm2.bias", "blocks.1.mlp.0.weight", "blocks.1.mlp.0.bias", "blocks.1.mlp.2.weight",
    "blocks.1.mlp.2.bias", "pool.query", "pool.norm.weight", "pool.norm.bias", "pool.kv.weight", "pool.kv.bias",
    "pool.proj.weight", "pool.proj.bias", "norm.weight", "norm.bias", "fc.weight", "fc.bias"]


def test_batch_norm_mhcnn_keeps_its_state_dict_keys_and_the_default_is_batch():
    for m in (create_model("mhcnn", num_classes=5), create_model("mhcnn", num_classes=5, norm="batch")):
        assert list(m.state_dict()) == MHCNN_KEYS_BEFORE_NORM
        assert all(isinstance(m.get_submodule(name), torch.nn.BatchNorm2d) for name in NORM_LAYERS)


def test_the_shipped_checkpoint_still_loads_strictly():
    from wbcnet.models.checkpoint import load_model

    model, meta = load_model()  # load_state_dict is strict: a renamed or missing key fails here
    expected = torch.nn.GroupNorm if meta.model_args.get("norm") in ("group", "layer") else torch.nn.BatchNorm2d
    assert isinstance(model.get_submodule("stem.0.1"), expected)


def test_new_checkpoints_record_the_norm():
    from wbcnet.models import full_model_args

    assert full_model_args("mhcnn", {})["norm"] == "batch"
    assert full_model_args("mhcnn", {"norm": "group"})["norm"] == "group"


@pytest.mark.parametrize("norm,groups", [("group", [8, 8, 8, 8, 8, 8, 8, 8]), ("layer", [1] * 8)])
def test_group_and_layer_norm_have_the_batch_norm_keys_less_the_running_statistics(norm, groups):
    m = create_model("mhcnn", num_classes=5, norm=norm)
    running = ("running_mean", "running_var", "num_batches_tracked")
    assert list(m.state_dict()) == [k for k in MHCNN_KEYS_BEFORE_NORM if not k.endswith(running)]
    assert [m.get_submodule(name).num_groups for name in NORM_LAYERS] == groups


def test_group_norm_divides_any_width():
    m = create_model("mhcnn", num_classes=5, img_size=32, widths=(20, 36, 50, 60), heads=6, norm="group")
    assert [g.num_groups for g in m.modules() if isinstance(g, torch.nn.GroupNorm)] == [4, 4, 2, 2, 2, 4, 4, 4]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_group_and_layer_norm_standardise_their_conv_weights_and_batch_norm_does_not():
    from wbcnet.models.mhcnn import StdConv2d

    convs = lambda m: [type(c) for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert set(convs(create_model("mhcnn", num_classes=5))) == {torch.nn.Conv2d}
    for norm in ("group", "layer"):
        assert set(convs(create_model("mhcnn", num_classes=5, norm=norm))) == {StdConv2d}
    # a standardised filter ignores its own scale and offset
    torch.manual_seed(0)
    conv = StdConv2d(3, 4, 3, 1, 1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(torch.tensor([1.5, 2.0, 5.0, 1.0]).view(4, 1, 1, 1)).add_(0.3)
    assert torch.allclose(conv(x), y, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_pooled_features_tell_images_apart_at_initialisation(norm):
    # Without weight standardisation, group and layer norm gave every image nearly the same pooled
    # features (5-7% of their variance between images, against 59% with batch norm), and training
    # sat at chance for many steps. With it: 39-48%.
    torch.manual_seed(0)
    m = create_model("mhcnn", num_classes=5, img_size=64, norm=norm).train()
    x = torch.nn.functional.interpolate(torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
                                        size=(64, 64), mode="bilinear")
    pooled = []
    m.pool.register_forward_hook(lambda module, inputs, out: pooled.append(out[0]))  # returns None: output kept
    m(x)
    p = pooled[0]
    between_images = p.var(0).sum() / ((p - p.mean()) ** 2).mean(0).sum()
    assert between_images > 0.25


def test_unknown_norm_is_a_clear_error():
    with pytest.raises(WbcnetError, match="norm must be one of batch, group, layer"):
        create_model("mhcnn", num_classes=5, norm="instance")


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_group_and_layer_norm_use_no_batch_statistics_in_train_mode(norm):
    # A cell's output must not depend on which other cells (which lab's) share its batch.
    torch.manual_seed(0)
    m = create_model("mhcnn", num_classes=5, img_size=64, dropout=0.0, norm=norm).train()
    x = torch.rand(6, 3, 64, 64)
    alone = m(x[:1])
    together = m(torch.cat([x[:1], x[1:] * 0.5 + 0.3]))[:1]
    assert torch.allclose(alone, together, atol=1e-5)
    bn = create_model("mhcnn", num_classes=5, img_size=64, dropout=0.0).train()
    assert not torch.allclose(bn(x[:2])[:1], bn(torch.cat([x[:1], x[1:] * 0.5 + 0.3]))[:1], atol=1e-3)


def test_group_norm_mhcnn_trains_a_step_with_bf16_and_channels_last():
    torch.manual_seed(0)
    m = create_model("mhcnn", num_classes=5, norm="group").to(memory_format=torch.channels_last).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randn(4, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[k], v) for k, v in m.state_dict().items() if k.endswith(".weight"))
