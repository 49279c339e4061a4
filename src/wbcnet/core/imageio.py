"""The one place that opens image files.

Every image that enters wbcnet, for training, evaluation or prediction, comes through
`load_rgb`: it turns whatever a microscope or a user hands us (JPEG, PNG, TIFF, BMP; grayscale,
RGBA, palette, CMYK, 16-bit; EXIF-rotated; huge) into an RGB uint8 array of a fixed size,
or raises `ImageReadError` with a one-line reason. `image_info` reads only a file's header, for
reports of what is on disk (the audit's sizes, modes and formats).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import WbcnetError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}

# A cell crop or a microscope field is at most a few thousand pixels wide; anything above this is
# a slide scan or a decompression bomb, and we refuse it rather than fill the memory. It is below
# Pillow's own warning (89 MP), whose message would add nothing; a warnings filter set per call
# would not be thread-safe, and images are decoded in threads.
MAX_PIXELS = 8_000 * 8_000
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageReadError(WbcnetError):
    """An image that cannot be used. str(err) is 'PATH: reason'."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_candidate(path: Path) -> bool:
    """Files worth trying to open: image extensions, not hidden (.DS_Store, ._foo.jpg)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grayscale: stretch the full range PIL can hold into 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, the colour of an empty slide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, P, CMYK, YCbCr, LAB, 1: PIL knows the conversion (CMYK through its own profile-free path).
    return img.convert("RGB")


def _pad_square(arr: np.ndarray) -> np.ndarray:
    """Centre a non-square crop on a square by repeating its edges, so the cell is not squashed."""
    h, w = arr.shape[:2]
    if h == w:
        return arr
    d = abs(h - w)
    before, after = d // 2, d - d // 2
    pad = ((before, after), (0, 0), (0, 0)) if h < w else ((0, 0), (before, after), (0, 0))
    return np.pad(arr, pad, mode="edge")


def load_rgb(path, size: int | None = None, min_side: int | None = None) -> np.ndarray:
    """Read `path` as an RGB uint8 array (H, W, 3); with `size`, padded square and resized to it.

    JPEGs are decoded with DCT scaling ("draft" mode) to the smallest scale that is still at
    least `size` (or `min_side`, when the caller crops before resizing): a 575 px original is
    decoded at 1/4 (144 px) for a 112 px model, several times cheaper, and after the final
    Lanczos resize it stays within a grey level or so of a full decode on average
    (tests/test_imageio.py checks it).
    """
    draft = size or min_side
    with _read_errors(path) as path:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageReadError(path, f"image too large ({img.width}x{img.height} pixels)")
            if draft is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
                img.draft("RGB", (draft, draft))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    arr = np.asarray(img, dtype=np.uint8)
    return arr if size is None else square_resize(arr, size)


def square_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square by repeating edges (the cell is not squashed), then resize to `size`."""
    arr = _pad_square(arr)
    if arr.shape[0] != size:
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS))
    return arr


def image_info(path) -> tuple[int, int, str, str]:
    """(width, height, mode, format) of `path` as stored on disk, from its header alone: no pixel
    data is decoded and no EXIF rotation applied, so it is cheap for any size. Raises
    `ImageReadError` when the header cannot be read."""
    with _read_errors(path) as path:
        with Image.open(path) as img:
            return img.width, img.height, img.mode, img.format or "?"


@contextmanager
def _read_errors(path):
    """Yield `path` as a Path; whatever goes wrong reading it becomes an ImageReadError with a
    one-line reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        yield path
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file PIL can read") from None
    except Image.DecompressionBombError:
        raise ImageReadError(path, "image too large (decompression bomb guard)") from None
    except OSError as e:
        reason = str(e) or type(e).__name__
        if "truncated" in reason:
            reason = "truncated or corrupt image data"
        raise ImageReadError(path, reason) from None
    except (ValueError, SyntaxError) as e:  # broken headers
        raise ImageReadError(path, f"corrupt image ({e})") from None
