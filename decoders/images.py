"""Decoder-side image preprocessing shared by every decoder that takes its own image.

Each decoder sees the image at its own square resolution (Grounding DINO at
`DetectorConfig.image_size`, the editor at its latent size), separate from the
MLLM's vision tiles. The original (width, height) is kept so predictions can be
mapped back to the caller's pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from decoders.base import DecoderInputError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ImageInput = np.ndarray | Image.Image


def image_to_tensor(image: ImageInput, index: int = 0) -> torch.Tensor:
    """One RGB image as float (3, H, W) in [0, 1].

    Accepted: a PIL image (any mode, converted to RGB), a uint8 array (H, W, 3) or (H, W),
    or a float array (H, W, 3) with values in [0, 1].
    """
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))  # a writable copy
    if not isinstance(image, np.ndarray):
        raise DecoderInputError(
            f"image {index}: expected a PIL image or a numpy array, got {type(image).__name__}"
        )
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise DecoderInputError(f"image {index}: expected shape (H, W, 3) or (H, W), got {image.shape}")
    if image.dtype == np.uint8:
        arr = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise DecoderInputError(f"image {index}: float images must be finite and within [0, 1]")
        arr = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    else:
        raise DecoderInputError(
            f"image {index}: dtype {image.dtype} not accepted; use uint8 or float in [0, 1]"
        )
    return arr.permute(2, 0, 1)  # (3, H, W)


def prepare_images(
    images: Sequence[ImageInput],
    size: int,
    max_pixels: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize every image to (size, size) and normalise: returns pixel_values (B, 3, S, S) and sizes [(w, h)].

    The aspect ratio is not kept (boxes map back per axis); `max_pixels` bounds w * h of each input.
    """
    if len(images) == 0:
        raise DecoderInputError("prepare_images: got an empty image list; pass at least one image")
    if size < 1:
        raise DecoderInputError(f"prepare_images: size must be positive, got {size}")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    out, sizes = [], []
    for i, image in enumerate(images):
        t = image_to_tensor(image, i)  # (3, H, W)
        h, w = t.shape[1:]
        if h * w > max_pixels:
            raise DecoderInputError(
                f"image {i}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels"
            )
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out.append((t.clamp(0.0, 1.0) - mean_t) / std_t)
        sizes.append((int(w), int(h)))
    return torch.stack(out), sizes  # (B, 3, S, S)
