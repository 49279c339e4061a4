import pytest
import torch

from wbcnet.models import create_model, list_models
from wbcnet.errors import WbcnetError

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
