"""One image conversion for the training data and the demo: any Pillow image as 8-bit RGB.

Pillow and NumPy only, no other part of this package: ``cifar10-transfer export`` copies this
file next to the demo's ``app.py``, so the Space converts uploads exactly as ``data`` converts
training images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# What the demo opens: the common photo and web formats. Not every format Pillow knows: EPS,
# for one, runs Ghostscript where it is installed.
DEMO_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
DATA_FORMATS = ("PNG", "JPEG")  # what CIFAR-10 image-folder copies hold
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


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
