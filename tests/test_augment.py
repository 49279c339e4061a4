import torch

from wbcnet.data.augment import AugmentConfig, augment_batch, normalize


def batch(n=8, s=48):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)


def test_shapes_types_and_range():
    x = augment_batch(batch(), AugmentConfig(), torch.Generator().manual_seed(1))
    assert x.shape == (8, 3, 48, 48) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1


def test_deterministic_for_a_generator_seed():
    a = augment_batch(batch(), AugmentConfig(), torch.Generator().manual_seed(5))
    b = augment_batch(batch(), AugmentConfig(), torch.Generator().manual_seed(5))
    c = augment_batch(batch(), AugmentConfig(), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_identity_when_everything_is_off():
    off = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, rot90=False, brightness=0,
                        contrast=0, saturation=0, hue=0, channel_gain=0)
    x = batch()
    y = augment_batch(x, off, torch.Generator().manual_seed(0))
    assert torch.allclose(y, x.float() / 255, atol=1e-4)


def test_nearest_fill_repeats_the_border_instead_of_adding_black():
    # Keras fill_mode='nearest': a uniform image stays uniform however far it is shifted or turned
    x = torch.full((4, 3, 32, 32), 180, dtype=torch.uint8)
    y = augment_batch(x, AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, channel_gain=0),
                      torch.Generator().manual_seed(2))
    assert torch.allclose(y, torch.full_like(y, 180 / 255), atol=1e-5)


def test_geometry_moves_pixels():
    x = batch(4, 32)
    y = augment_batch(x, AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, channel_gain=0),
                      torch.Generator().manual_seed(3))
    assert (y - x.float() / 255).abs().mean() > 0.05


def test_normalize():
    x = torch.full((1, 3, 2, 2), 0.5)
    y = normalize(x, [0.5, 0.25, 0.0], [0.5, 0.25, 0.5])
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0]))


def test_magnify_zooms_in():
    # a centred bright square grows when the image is magnified
    x = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 12:20, 12:20] = 255
    still = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, rot90=False, brightness=0,
                          contrast=0, saturation=0, hue=0, channel_gain=0)
    plain = augment_batch(x, still, torch.Generator().manual_seed(0))
    import dataclasses
    magnified = augment_batch(x, dataclasses.replace(still, magnify=3.0), torch.Generator().manual_seed(0))
    area = lambda y: (y[:, 0] > 0.5).float().sum((1, 2))
    assert torch.equal(area(plain), torch.full((64,), 64.0))
    assert (area(magnified) >= 64).all() and (area(magnified) > 100).float().mean() > 0.25
