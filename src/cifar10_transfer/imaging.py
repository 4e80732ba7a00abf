"""One image conversion for the training data and the demo: any Pillow image as 8-bit RGB
(``to_rgb``), and an uploaded photo as the 32x32 input the model takes (``load_image``).

Pillow and NumPy only, no other part of this package: ``cifar10-transfer export`` copies this
file next to the demo's ``app.py``, so the Space converts uploads exactly as ``data`` converts
training images, and notebook 05 classifies a reader's own photo exactly as the demo does.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# What the demo opens: the common photo and web formats. Not every format Pillow knows: EPS,
# for one, runs Ghostscript where it is installed.
DEMO_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
DATA_FORMATS = ("PNG", "JPEG")  # what CIFAR-10 image-folder copies hold
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
IMAGE_SIZE = 32  # the model's input side, px: CIFAR-10's resolution
MAX_FILE_BYTES = 10 * 1024 * 1024  # uploads above this are refused
MAX_IMAGE_PIXELS = 40_000_000  # decoded size limit; a phone photo is ~12 MP


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB; transparent pixels become white."""
    if image.mode in SIXTEEN_BIT_MODES:
        # 16-bit greyscale: convert("RGB") would clip everything above 255 to white.
        # 257 = 65535 / 255 maps the full 16-bit range onto 8 bits.
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        # Composite on white (not black): most cut-out product photos and logos assume white.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, 8-bit RGB


class ImageRejected(ValueError):
    """An upload that cannot be classified; the message is shown to the user as is."""


def _check_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise ImageRejected(
            f"The file is {size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB."
        )


def _read_upload(source: str | os.PathLike | bytes) -> bytes:
    if not isinstance(source, bytes):
        _check_size(os.path.getsize(source))  # before reading: never load an oversized file
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not raw:
        raise ImageRejected("The file is empty (0 bytes). Please upload an image.")
    _check_size(len(raw))
    return raw


def load_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode an uploaded file (path or bytes) into the uint8 (32, 32, 3) array the model takes.

    Raises ImageRejected with a user-readable message for anything that is not a usable image.
    """
    raw = _read_upload(source)
    try:
        with Image.open(io.BytesIO(raw), formats=DEMO_FORMATS) as image:
            # Image.open only reads the header; the pixel limit is checked again here because
            # Pillow's own guard (Image.MAX_IMAGE_PIXELS, the app's warning filter) is
            # process-wide state that a host (pytest, a notebook) may change.
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale in the DCT (fast, and itself an
            # antialiased downsample), keeping at least 8x the model's side for the resize below.
            image.draft(None, (8 * IMAGE_SIZE, 8 * IMAGE_SIZE))
            image.load()  # decode everything now, so truncation raises here
            image = ImageOps.exif_transpose(image)  # phone photos: honour the Orientation tag
            image = to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(
            f"The image is too large to decode safely ({error}); "
            f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels."
        ) from error
    except UnidentifiedImageError as error:
        raise ImageRejected(
            "This file is not an image Pillow can read. Please upload a PNG, JPEG, WebP, GIF, "
            "BMP or TIFF file."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"The image file is damaged or truncated ({error}).") from error

    # Center-crop to a square first: CIFAR-10 images are square with the object in the middle,
    # and squashing a wide photo into 32x32 would distort shapes the model never saw distorted.
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    # CIFAR-10 images are antialiased downsamples of larger photos, so shrink the same way:
    # Lanczos over the full crop (reducing_gap first box-averages big images, cheaply). The
    # model then resizes 32 px to its backbone's size internally, exactly as in training.
    small = image.resize(
        (IMAGE_SIZE, IMAGE_SIZE),
        Image.Resampling.LANCZOS,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )
    return np.asarray(small, dtype=np.uint8)


def thumbnail(source: str | os.PathLike, side: int = 512) -> np.ndarray:
    """An upload (already accepted by ``load_image``) at most ``side`` px, as RGB, for display."""
    with Image.open(io.BytesIO(_read_upload(source)), formats=DEMO_FORMATS) as image:
        image.draft(None, (side, side))
        image = to_rgb(ImageOps.exif_transpose(image))
        image.thumbnail((side, side))
        return np.asarray(image)


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB ``uint8`` array as a PNG (a temporary file, then renamed); return its path."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(temporary, format="PNG")
    os.replace(temporary, path)
    return path
