"""Input images as 8-bit RGB arrays, whatever the file stores.

PIL's ``convert("RGB")`` clips a 16-bit grayscale image (mode ``I;16``, as a 16-bit PNG opens) to
255, so almost every pixel turns white. Here 16-bit values are scaled to 8 bits (``v * 255 /
65535``, rounded); palette, grayscale, alpha, CMYK and 16-bit RGB images (which PIL reads as their
high bytes) go through PIL's conversion; 32-bit integer and floating-point images have no agreed
range and are refused with a message rather than guessed.
"""
from __future__ import annotations

import numpy as np


class ImageModeError(ValueError):
    """An image whose pixel format has no sure conversion to 8-bit RGB."""


def rgb8(image) -> np.ndarray:
    """``image`` (a PIL image) as an H x W x 3 uint8 array."""
    mode = image.mode
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageModeError(f"{mode} image with values outside 0..65535")
        gray = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("I", "F") or mode.startswith(("I;", "F;")):
        kind = "floating-point" if mode.startswith("F") else "32-bit integer"
        raise ImageModeError(f"{kind} image (mode {mode}) has no standard 8-bit range; convert "
                             f"it to 8-bit RGB first")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
