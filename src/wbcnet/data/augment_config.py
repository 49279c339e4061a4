"""The augmentation strengths of a training run (TrainConfig.augment): a plain dataclass, so that
reading a config or building the `wbcnet train` flags never imports torch. data/augment.py applies
them."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import WbcnetError


@dataclass
class AugmentConfig:
    rotation: float = 30.0        # degrees, uniform +-
    shift: float = 0.2            # fraction of the side, uniform +-
    shear: float = 0.25           # shear factor, uniform +-
    zoom: float = 0.2             # scale in [1 - zoom, 1 + zoom], per axis like Keras
    magnify: float = 1.0          # isotropic zoom-in up to this factor (log-uniform, half the images):
                                  # other labs frame cells tighter; 1 turns it off
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.2
    hue: float = 0.03             # fraction of a full turn of the colour wheel
    channel_gain: float = 0.05    # independent R, G, B gain, uniform +-
    # Other labs' optics, cameras and stains. All off by default; suggested values in the comments.
    blur: float = 0.0             # probability of a Gaussian blur (0.3 suggested)
    blur_sigma: float = 1.5       # its sigma is uniform in [0.3, blur_sigma] pixels at the training size
    downscale: float = 1.0        # half the images shrink by a log-uniform factor in [1, downscale] and
                                  # enlarge back: a lower-resolution camera (2.5 suggested; 1 = off)
    jpeg: float = 0.0             # probability of JPEG re-compression at a quality uniform in 30-90 (0.3 suggested)
    hed: float = 0.0              # HED stain jitter: each stain's optical density s -> a*s + b with
                                  # a ~ U(1 - hed, 1 + hed), b ~ U(-hed, hed) (0.03-0.05 suggested; 0 = off)
    grayscale: float = 0.0        # probability that an image loses its colour: the model must also
                                  # know a cell by shape and texture when a lab's stain hues differ
    # How labs really take pictures (issue 28): wider than any lab in view, each off by default.
    defocus: float = 0.0          # probability of defocus: a disc (pillbox) kernel, the out-of-focus
                                  # blur of a lens, of radius uniform in [0.5, defocus_radius] pixels
    defocus_radius: float = 4.0   # at the training size: 4 px of a 112 px crop is a 575 px picture's ~15 px
    pale: float = 0.0             # probability of a pale (faded, under-stained) slide: every stain's
                                  # optical density times k, log-uniform in [pale_min, 1]
    pale_min: float = 0.2
    tint: float = 0.0             # probability of a coloured light or mountant (a yellow background is
                                  # one): up to tint_od optical density added to each channel
    tint_od: float = 0.35
    temperature: float = 0.0      # probability of another lamp colour temperature (kornia's Planckian
                                  # jitter, 3,500-15,000 K)
    gamma: float = 0.0            # probability of a camera gamma, log-uniform in [0.5, 2]
    uneven_light: float = 0.0     # probability of uneven light: a gradient and a bright or dark spot
                                  # (kornia's linear and Gaussian illumination)
    noise: float = 0.0            # probability of sensor noise, Gaussian, sigma uniform in [0, 0.04]

    def __post_init__(self):
        # Only the camera and stain fields are checked here: a wrong value of theirs would pass
        # silently (a blur "probability" of 2, a downscale of 0.5 that enlarges instead).
        def number(name, ok, what):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise WbcnetError(f"augment.{name}: {what}, not {v!r}")

        number("blur", lambda v: 0 <= v <= 1, "is a probability, in [0, 1]")
        number("jpeg", lambda v: 0 <= v <= 1, "is a probability, in [0, 1]")
        number("grayscale", lambda v: 0 <= v <= 1, "is a probability, in [0, 1]")
        for name in ("defocus", "pale", "tint", "temperature", "gamma", "uneven_light", "noise"):
            number(name, lambda v: 0 <= v <= 1, "is a probability, in [0, 1]")
        number("defocus_radius", lambda v: 0.5 <= v <= 16, "is the largest defocus radius in pixels, in [0.5, 16]")
        number("pale_min", lambda v: 0.05 <= v <= 1, "is the palest stain left, a fraction in [0.05, 1]")
        number("tint_od", lambda v: 0 <= v <= 2, "is the strongest tint in optical density, in [0, 2]")
        number("blur_sigma", lambda v: v > 0.3, "is the largest blur sigma in pixels, above 0.3")
        number("downscale", lambda v: v >= 1, "is a shrink factor, at least 1 (1 = off)")
        number("hed", lambda v: 0 <= v < 1, "is the HED jitter's sigma, in [0, 1) (0 = off)")
