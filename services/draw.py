"""Draw a Response onto its input image: boxes, masks, polygons, points, keypoints, and generated
or edited images placed beside their source. Shared by `superlink run --out` and `superlink demo`.

    annotate(image, response) -> PIL.Image   (image may be None for pure generation)
    annotate(image, response, regions)        also draws the request's region prompts (white)
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from evaluation.coco import rle_to_mask
from router.schemas import RegionPrompt, Response

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40),
)  # fmt: skip
MIN_SIDE = 384  # small scenes are upscaled (nearest) so labels and keypoints stay legible
GAP = 8


def colour_for(key: str, seen: dict[str, tuple[int, int, int]]) -> tuple[int, int, int]:
    """One colour per phrase, stable within a picture."""
    if key not in seen:
        seen[key] = PALETTE[len(seen) % len(PALETTE)]
    return seen[key]


def _upscaled(image: Image.Image) -> tuple[Image.Image, float]:
    """The image at a legible size, and the factor its pixel coordinates are multiplied by."""
    side = min(image.size)
    factor = max(1, MIN_SIDE // side) if side < MIN_SIDE else 1
    if factor == 1:
        return image.convert("RGB"), 1.0
    return image.convert("RGB").resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST), float(factor)


def _decode_mask(rle: object, size: tuple[int, int]) -> np.ndarray | None:
    """RLE -> (H, W) bool at the drawn size, or None when the mask does not belong to this image."""
    mask = rle_to_mask(rle)
    if mask.shape[::-1] != size:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return mask


def draw_masks(canvas: Image.Image, response: Response, image: int, seen: dict) -> Image.Image:
    """Blend each instance mask in its phrase's colour (alpha 0.45)."""
    out = np.asarray(canvas, dtype=np.float32).copy()  # (H, W, 3)
    for d in response.detections:
        if d.image != image or d.mask is None:
            continue
        mask = _decode_mask(d.mask, canvas.size)
        out[mask] = 0.55 * out[mask] + 0.45 * np.asarray(colour_for(d.phrase or d.label, seen), np.float32)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int]) -> None:
    x, y = xy
    left, top, right, bottom = draw.textbbox((x, y), text)
    y = max(0.0, y - (bottom - top) - 2)
    draw.rectangle((x, y, x + right - left + 4, y + bottom - top + 2), fill=colour)
    draw.text((x + 2, y), text, fill=(255, 255, 255))


def draw_items(canvas: Image.Image, response: Response, image: int, scale: float, seen: dict) -> None:
    """Boxes with labels, polygons, points and keypoints, in place."""
    draw = ImageDraw.Draw(canvas)
    for d in (d for d in response.detections if d.image == image):
        c = colour_for(d.phrase or d.label, seen)
        box = tuple(v * scale for v in d.box)
        draw.rectangle(box, outline=c, width=2)
        tag = f"{d.label} {d.score:.2f}" if d.route else f"{d.label} (loc)"
        _label(draw, (box[0], box[1]), tag, c)
    for p in (p for p in response.polygons if p.image == image):
        c = colour_for(p.phrase or p.label, seen)
        draw.polygon([(x * scale, y * scale) for x, y in p.points], outline=c, width=2)
    for p in (p for p in response.points if p.image == image):
        x, y, c = p.point[0] * scale, p.point[1] * scale, colour_for(p.phrase or p.label, seen)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=c, width=2)
    for k in (k for k in response.keypoints if k.image == image):
        c = colour_for(k.phrase or k.label, seen)
        draw.rectangle(tuple(v * scale for v in k.box), outline=c, width=1)
        for x, y, v in k.keypoints:
            if v >= 0.5:
                draw.ellipse((x * scale - 4, y * scale - 4, x * scale + 4, y * scale + 4), fill=c, outline=(0, 0, 0))


PROMPT_COLOUR = (255, 255, 255)


def draw_prompts(canvas: Image.Image, regions: Sequence[RegionPrompt], image: int, scale: float) -> None:
    """The request's box, point and scribble region prompts on `image`, in white with a dark edge, in place."""
    draw = ImageDraw.Draw(canvas)
    for r in (r for r in regions if r.image == image):
        if r.box is not None:
            draw.rectangle(tuple(v * scale for v in r.box), outline=PROMPT_COLOUR, width=2)
        elif r.point is not None:
            x, y = r.point[0] * scale, r.point[1] * scale
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=PROMPT_COLOUR, outline=(0, 0, 0))
        elif r.scribble is not None:
            width = max(1, round(r.scribble.width * scale))
            for line in r.scribble.lines:
                pts = [(x * scale, y * scale) for x, y in line]
                if len(pts) > 1:
                    draw.line(pts, fill=PROMPT_COLOUR, width=width, joint="curve")
                for x, y in pts:
                    draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=PROMPT_COLOUR)


def annotate_input(
    image: Image.Image, response: Response, image_index: int = 0, regions: Sequence[RegionPrompt] = ()
) -> Image.Image:
    """The input image with every perception result of `response` (and the region prompts) drawn on it."""
    seen: dict[str, tuple[int, int, int]] = {}
    canvas, scale = _upscaled(image)
    canvas = draw_masks(canvas, response, image_index, seen)
    draw_prompts(canvas, regions, image_index, scale)
    draw_items(canvas, response, image_index, scale, seen)
    return canvas


def generated_images(response: Response) -> list[Image.Image]:
    """Every [GEN]/[EDIT] image in the response, decoded."""
    return [Image.open(io.BytesIO(base64.b64decode(g.png_base64))).convert("RGB") for g in response.images]


def side_by_side(panels: Sequence[Image.Image], height: int) -> Image.Image:
    """Panels scaled (nearest) to one height and placed left to right on white."""
    scaled = [p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.NEAREST) for p in panels]
    out = Image.new("RGB", (sum(p.width for p in scaled) + GAP * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for p in scaled:
        out.paste(p, (x, 0))
        x += p.width + GAP
    return out


def annotate(
    image: Image.Image | np.ndarray | None, response: Response, regions: Sequence[RegionPrompt] = ()
) -> Image.Image:
    """The input with results drawn, and generated / edited images beside it (a single picture).

    `image` is the request's first image (None for pure generation); with neither an image nor a
    generated picture there is nothing to draw and this raises ValueError.
    """
    panels = []
    if image is not None:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        panels.append(annotate_input(pil, response, regions=regions))
    panels += [_upscaled(g)[0] for g in generated_images(response)]
    if not panels:
        raise ValueError("nothing to draw: the request had no image and the response holds no generated image")
    return panels[0] if len(panels) == 1 else side_by_side(panels, panels[0].height)
