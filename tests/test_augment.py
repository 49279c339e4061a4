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


# --- other labs' stains, optics and cameras: blur, downscale, jpeg, hed -------------------------

import dataclasses  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from wbcnet.training.config import TrainConfig
from wbcnet.data.augment import _HED_FROM_RGB, _RGB_FROM_HED, affine_matrices, color_jitter, hed_jitter  # noqa: E402
from wbcnet.core.errors import WbcnetError

STILL = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, rot90=False, brightness=0,
                      contrast=0, saturation=0, hue=0, channel_gain=0)
NEW_ON = {"blur": 1.0, "downscale": 3.0, "jpeg": 1.0, "hed": 0.1,
          # issue 28: pictures as labs take them
          "defocus": 1.0, "pale": 1.0, "tint": 1.0, "temperature": 1.0, "gamma": 1.0, "uneven_light": 1.0, "noise": 1.0}
NEW_OFF = {"blur": 0.0, "downscale": 1.0, "jpeg": 0.0, "hed": 0.0,
           "defocus": 0.0, "pale": 0.0, "tint": 0.0, "temperature": 0.0, "gamma": 0.0, "uneven_light": 0.0, "noise": 0.0}
# stages whose random strength can come out close to none (a lamp near daylight, gamma near 1, faint noise)
SOMETIMES_FAINT = {"temperature", "gamma", "noise"}


def cells(n=8, s=48):
    """Smooth, cell-like images (random blobs, blurred): JPEG and blur act on them as on real cells."""
    x = batch(n, s // 4).float()
    return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False).round().to(torch.uint8)


def warp_and_colour_only(images, cfg, g):
    """augment_batch as it was before the camera and stain stages: a config that leaves them off
    must give exactly these batches, or every existing recipe would train on different data."""
    x = images.float().div_(255)
    grid = F.affine_grid(affine_matrices(x.shape[0], cfg, g, x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return color_jitter(x, cfg, g)


def test_new_stages_are_off_by_default():
    assert {k: getattr(AugmentConfig(), k) for k in NEW_OFF} == NEW_OFF


def test_default_config_gives_bit_identical_batches_to_the_old_pipeline():
    x = cells()
    for seed in range(3):
        new = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(seed))
        old = warp_and_colour_only(x, AugmentConfig(), torch.Generator().manual_seed(seed))
        assert torch.equal(new, old)


@pytest.mark.parametrize("field", sorted(NEW_ON))
def test_each_new_stage_changes_the_image_when_on_and_is_bit_exact_when_off(field):
    x = cells()
    still = augment_batch(x, STILL, torch.Generator().manual_seed(0))
    off = augment_batch(x, dataclasses.replace(STILL, **{field: NEW_OFF[field]}), torch.Generator().manual_seed(0))
    on = augment_batch(x, dataclasses.replace(STILL, **{field: NEW_ON[field]}), torch.Generator().manual_seed(0))
    assert torch.equal(off, still)
    changed = (on - still).abs().flatten(1).amax(1) > 2 / 255
    # the others are on for every image here; downscale picks half of them
    assert changed.float().mean() >= (0.25 if field == "downscale" else 0.5 if field in SOMETIMES_FAINT else 1.0)
    assert on.shape == still.shape and on.dtype == torch.float32 and on.min() >= 0 and on.max() <= 1


def test_downscale_leaves_the_images_it_does_not_pick_untouched():
    x = cells(32)
    still = augment_batch(x, STILL, torch.Generator().manual_seed(0))
    on = augment_batch(x, dataclasses.replace(STILL, downscale=3.0), torch.Generator().manual_seed(0))
    same = (on == still).flatten(1).all(1)
    assert 0 < same.sum() < 32


def test_blur_and_downscale_soften_edges():
    x = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    x[:, :, :, 16:] = 255  # a sharp vertical edge
    sharpness = lambda y: (y[..., 1:] - y[..., :-1]).abs().amax((1, 2, 3))
    for field, value in (("blur", 1.0), ("downscale", 3.0), ("defocus", 1.0)):
        y = augment_batch(x, dataclasses.replace(STILL, **{field: value}), torch.Generator().manual_seed(0))
        assert (sharpness(y) < 0.95).float().mean() >= 0.4, field


def test_all_new_stages_are_deterministic_for_a_generator_seed():
    cfg = AugmentConfig(**NEW_ON)
    x = cells()
    a = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_camera_stages_keep_a_uniform_image_uniform():
    # like the warp's nearest fill: no dark frame from blur padding or resampling, no JPEG ringing
    x = torch.full((8, 3, 32, 32), 180, dtype=torch.uint8)
    y = augment_batch(x, dataclasses.replace(STILL, blur=1.0, downscale=3.0, jpeg=1.0), torch.Generator().manual_seed(2))
    assert (y * 255 - 180).abs().max() <= 1.01


def test_hed_matrix_is_ruifrok_johnstons_as_skimage_has_it():
    expected = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
    assert torch.equal(_RGB_FROM_HED, expected)
    assert torch.allclose(_HED_FROM_RGB @ _RGB_FROM_HED, torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_hed_with_zero_sigma_round_trips_every_colour():
    x = batch(8, 48)
    x[0] = 0      # black: the +1 in the optical density keeps it finite
    x[1] = 255    # white
    y = hed_jitter(x.float() / 255, 0.0, torch.Generator().manual_seed(0))
    assert ((y * 255).round() - x.float()).abs().max() <= 1


def test_hed_jitter_moves_colour_along_the_stain_axes():
    # a flat patch of pure haematoxylin changes colour, but stays flat: the jitter is per image
    od = torch.tensor([0.65, 0.70, 0.29]).view(1, 3, 1, 1)  # one unit of haematoxylin
    nucleus = torch.exp(-od).expand(64, 3, 4, 4)
    y = hed_jitter(nucleus, 0.2, torch.Generator().manual_seed(0))
    assert (y - nucleus).abs().amax((1, 2, 3)).min() > 0.01
    assert y.std((2, 3)).max() < 1e-5  # a colour change, the same for every pixel of an image


def test_new_fields_are_checked_and_come_from_yaml():
    for bad in ({"blur": 1.5}, {"jpeg": -0.1}, {"downscale": 0.5}, {"hed": 1.0}, {"blur_sigma": 0.1}, {"hed": "0.05"}):
        with pytest.raises(WbcnetError, match="augment"):
            AugmentConfig(**bad)
    cfg = TrainConfig.from_dict({"augment": {"hed": 0.05, "blur": 0.3, "downscale": 2.5, "jpeg": 0.3}})
    assert (cfg.augment.hed, cfg.augment.blur, cfg.augment.downscale, cfg.augment.jpeg) == (0.05, 0.3, 2.5, 0.3)


# --- issue 28: defocus, pallor, tints, lamp colour, gamma, uneven light, noise -------------------

from wbcnet.data.augment import disc_kernels  # noqa: E402


def test_disc_kernels_are_normalised_discs_of_their_radius():
    k = disc_kernels(torch.tensor([1.0, 3.0, 5.0]), 11)
    assert k.shape == (3, 11, 11) and torch.allclose(k.sum((1, 2)), torch.ones(3))
    covered = (k > 0).float().sum((1, 2))
    assert covered[0] < covered[1] < covered[2]
    # flat inside (a pillbox, not a Gaussian): the centre weighs as much as a pixel 2 px out
    assert torch.isclose(k[2, 5, 5], k[2, 5, 7]) and k[0, 5, 8] == 0


def test_pale_fades_stain_towards_the_background():
    x = torch.full((16, 3, 32, 32), 245, dtype=torch.uint8)
    x[:, :, 8:24, 8:24] = torch.tensor([90, 40, 140], dtype=torch.uint8).view(3, 1, 1)  # a violet nucleus
    y = augment_batch(x, dataclasses.replace(STILL, pale=1.0, pale_min=0.2), torch.Generator().manual_seed(0))
    contrast = (y[:, :, 0, 0] - y[:, :, 16, 16]).abs().sum(1)
    before = (x[0, :, 0, 0].float() - x[0, :, 16, 16].float()).abs().sum() / 255
    assert (contrast < before).all() and contrast.min() < 0.5 * before  # down to a fifth of the density


def test_tint_only_absorbs_and_colours_a_white_background():
    x = torch.full((32, 3, 16, 16), 250, dtype=torch.uint8)
    y = augment_batch(x, dataclasses.replace(STILL, tint=1.0, tint_od=0.35), torch.Generator().manual_seed(0))
    assert (y <= 250 / 255 + 1e-6).all()                   # a filter takes light away, never adds it
    spread = y[:, :, 0, 0].amax(1) - y[:, :, 0, 0].amin(1)
    assert (spread > 0.02).float().mean() > 0.5            # and it has a colour
    assert ((y[:, 2, 0, 0] < y[:, 0, 0, 0] - 0.05) & (y[:, 2, 0, 0] < y[:, 1, 0, 0] - 0.05)).any()  # yellow ones


def test_kornia_stages_repeat_for_a_seed_whatever_the_global_generator_did():
    cfg = dataclasses.replace(STILL, temperature=1.0, uneven_light=1.0)
    x = cells(16)
    torch.manual_seed(1)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    b = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state())  # and it leaves the global generator alone


def test_uneven_light_makes_a_uniform_field_uneven_and_noise_keeps_its_mean():
    x = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)
    lit = augment_batch(x, dataclasses.replace(STILL, uneven_light=1.0), torch.Generator().manual_seed(0))
    assert (lit.std((1, 2, 3)) > 0.01).float().mean() > 0.5
    noisy = augment_batch(x, dataclasses.replace(STILL, noise=1.0), torch.Generator().manual_seed(0))
    assert (noisy.mean((1, 2, 3)) - 128 / 255).abs().max() < 0.01 and noisy.std() > 0.005


def test_gamma_keeps_black_and_white_and_moves_the_middle():
    x = torch.zeros(32, 3, 8, 8, dtype=torch.uint8)
    x[:, :, :, 4:] = 255
    x[:, :, 4:, :4] = 128
    y = augment_batch(x, dataclasses.replace(STILL, gamma=1.0), torch.Generator().manual_seed(0))
    assert y[:, :, 0, 0].max() < 1e-6 and y[:, :, 0, 7].min() > 1 - 1e-6
    mid = y[:, 0, 5, 0]
    assert mid.min() < 0.45 and mid.max() > 0.55


def test_issue_28_fields_are_checked():
    for bad in ({"defocus": 2.0}, {"pale": -0.1}, {"pale_min": 0.0}, {"tint_od": 3.0}, {"defocus_radius": 40},
                {"noise": "0.1"}, {"uneven_light": 1.5}):
        with pytest.raises(WbcnetError, match="augment"):
            AugmentConfig(**bad)
