"""Turn any image a caller may hold into an 8-bit RGB PIL image, or refuse it with a clear message.

Accepted: PIL images of any mode (alpha composited on white, 16-bit scaled to 8 bit),
numpy arrays (H, W), (H, W, 1|3|4) of uint8, uint16 or float in [0, 1], torch tensors
(C, H, W) or (H, W, C) with the same dtypes, and encoded bytes (PNG, JPEG, ...).
Every input is checked against a pixel limit before its pixels are decoded.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED = (
    "accepted: PIL.Image.Image (any mode), numpy array (H, W) or (H, W, 1|3|4) of uint8/uint16/float in [0, 1], "
    "torch tensor (C, H, W) or (H, W, C) of the same dtypes, or encoded image bytes (PNG, JPEG, ...)"
)
_CHANNELS = (1, 3, 4)
_WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An image could not be used; the message says what was wrong and what is accepted."""


class TooManyPixels(ImageError):
    """The image is larger than the pixel limit (whether found from its header or by Pillow's bomb check)."""

    def __init__(self, message: str, size_text: str):
        super().__init__(message)
        self.size_text = size_text  # "W x H = N pixels" or "N pixels"


def load_image(x: Any, max_pixels: int) -> Image.Image:
    """Any supported image -> RGB PIL image of the same size; raises ImageError."""
    if isinstance(x, Image.Image):
        return _from_pil(x, max_pixels)
    if isinstance(x, np.ndarray):
        return _from_array(x, max_pixels, "numpy array")
    if isinstance(x, torch.Tensor):
        return _from_array(_tensor_to_hwc(x), max_pixels, "torch tensor")
    if isinstance(x, bytes | bytearray | memoryview):
        return _from_pil(_open_bytes(bytes(x), max_pixels), max_pixels)
    raise ImageError(f"unsupported image type {type(x).__name__}; {ACCEPTED}")


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height}); both sides must be at least 1 pixel")
    if width * height > max_pixels:
        size_text = f"{width}x{height} = {width * height} pixels"
        raise TooManyPixels(
            f"image is {size_text}; the limit is {max_pixels} (config model.max_image_pixels); downscale it first",
            size_text,
        )


# ---- encoded bytes ---------------------------------------------------------------------------
def _open_bytes(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header, check the size, then decode (so a decompression bomb is never decoded)."""
    if not data:
        raise ImageError(f"image bytes are empty; {ACCEPTED}")
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
        check_pixels(*im.size, max_pixels)
        im.load()
    except Image.DecompressionBombError as err:
        m = re.search(r"\((\d+) pixels\)", str(err))
        got = f"{m.group(1)} pixels" if m else "too many pixels"
        raise TooManyPixels(f"image is {got}; the limit is {max_pixels} (refused before decoding)", got) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"image bytes ({len(data)} bytes) are not a recognised image format; {ACCEPTED}"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"image bytes are corrupt or truncated ({err}); {ACCEPTED}") from None
    return ImageOps.exif_transpose(im)  # phone JPEGs: pixels as the user sees them


# ---- PIL ------------------------------------------------------------------------------------
def _from_pil(im: Image.Image, max_pixels: int) -> Image.Image:
    check_pixels(*im.size, max_pixels)
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float greyscale
        return _from_array(np.asarray(_int_mode_to_array(im)), max_pixels, f"PIL {im.mode} image")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBa", "La", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        return _composite_on_white(im.convert("RGBA"))
    try:
        return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as err:
        raise ImageError(f"cannot convert PIL mode {im.mode!r} to RGB ({err}); {ACCEPTED}") from None


def _int_mode_to_array(im: Image.Image) -> np.ndarray:
    """I;16* and I modes are 16-bit greyscale (how Pillow decodes 16-bit PNG).

    F (32-bit float, e.g. a float TIFF) carries no range of its own: values within [0, 1] are taken as
    such, values up to 255 as 8-bit levels and values up to 65535 as 16-bit levels.
    """
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and np.isfinite(a).all() and a.min() >= 0 and a.max() > 1.0:  # else [0, 1], or _to_uint8 refuses
            if a.max() > 65535.0:
                raise ImageError(
                    f"PIL mode 'F' image has values {a.min():g}..{a.max():g}; accepted ranges 0..1, 0..255 or 0..65535"
                )
            a = a / (255.0 if a.max() <= 255.0 else 65535.0)
        return a
    a = np.asarray(im.convert("I") if im.mode != "I" else im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ImageError(
            f"PIL mode {im.mode!r} image has values {a.min()}..{a.max()}; accepted 16-bit range 0..65535"
        )
    return a.astype(np.uint16)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


# ---- arrays and tensors ---------------------------------------------------------------------
def _tensor_to_hwc(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W, C) or (H, W) tensor -> (H, W[, C]) numpy; (C, H, W) wins when ambiguous."""
    t = t.detach().cpu()
    if t.dim() == 3 and t.shape[0] in _CHANNELS:
        t = t.permute(1, 2, 0)  # torch convention (C, H, W) -> (H, W, C)
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if t.dtype == torch.uint16:
        return t.to(torch.int32).numpy().astype(np.uint16)  # numpy() lacks uint16 on some builds
    try:
        return t.numpy()
    except TypeError as err:
        raise ImageError(f"torch tensor of dtype {t.dtype} is not supported ({err}); {ACCEPTED}") from None


def _from_array(a: np.ndarray, max_pixels: int, what: str) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ImageError(f"{what} has shape {tuple(a.shape)}; {ACCEPTED}")
    check_pixels(a.shape[1], a.shape[0], max_pixels)
    u8 = _to_uint8(a, what)
    if u8.ndim == 2:
        return Image.fromarray(u8).convert("RGB")
    if u8.shape[-1] == 4:
        return _composite_on_white(Image.fromarray(u8))
    return Image.fromarray(u8)


def _to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return np.round(a.astype(np.float32) / 257.0).astype(np.uint8)  # 65535 -> 255 exactly
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(
                f"{what} of dtype {a.dtype} contains NaN or inf; accepted finite floats in [0, 1]"
            )
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ImageError(
                f"{what} of dtype {a.dtype} has values {lo:g}..{hi:g}; float images must lie in [0, 1]"
            )
        return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageError(f"{what} has unsupported dtype {a.dtype}; {ACCEPTED}")
