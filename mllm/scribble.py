"""Scribble region prompts: one or more polylines of [x, y] pixel points drawn with a pen `width` px wide.

A scribble becomes a mask (PIL's ImageDraw line with curved joints, round caps as discs at every
point, so a single point is a dot of that diameter) and is then encoded like any other region mask.

    check_scribble([[[10, 12], [30, 40], [52, 41]]], width=6, size=(64, 64))
    rasterize_scribble([[[10, 12], [30, 40], [52, 41]]], width=6, size=(64, 64))  # (64, 64) bool
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

MAX_SCRIBBLE_LINES = 32
MAX_SCRIBBLE_POINTS = 1024  # over all lines of one scribble
MAX_SCRIBBLE_WIDTH = 256.0  # pixels
DEFAULT_SCRIBBLE_WIDTH = 4.0

Lines = list[list[tuple[float, float]]]


class ScribbleError(ValueError):
    """A scribble that cannot be drawn; the message says what was wrong and what is accepted."""


def check_scribble(lines: Any, width: Any, size: tuple[int, int] | None = None) -> tuple[Lines, float]:
    """Validated (lines, width): 1..32 polylines, each of >= 1 [x, y] points (a single point is a dot),
    at most 1024 points in all, width in (0, 256] px, and with `size` (w, h) every point on the image."""
    if not isinstance(lines, Sequence) or isinstance(lines, str) or not lines:
        raise ScribbleError("a scribble needs at least one polyline: [[[x, y], [x, y], ...], ...] in pixels")
    if len(lines) > MAX_SCRIBBLE_LINES:
        raise ScribbleError(f"a scribble has {len(lines)} polylines; at most {MAX_SCRIBBLE_LINES} are accepted")
    out: Lines = []
    for k, line in enumerate(lines):
        if not isinstance(line, Sequence) or isinstance(line, str) or not line:
            raise ScribbleError(f"scribble polyline {k} is empty; each polyline needs at least one [x, y] point")
        pts = []
        for p in line:
            if not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 2:
                raise ScribbleError(f"scribble polyline {k} holds {p!r}; each point is [x, y] in pixels")
            try:
                x, y = float(p[0]), float(p[1])
            except (TypeError, ValueError):
                raise ScribbleError(f"scribble polyline {k} holds {p!r}; coordinates must be numbers") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ScribbleError(f"scribble polyline {k} holds a non-finite point {p!r}")
            pts.append((x, y))
        out.append(pts)
    total = sum(len(line) for line in out)
    if total > MAX_SCRIBBLE_POINTS:
        raise ScribbleError(f"a scribble has {total} points; at most {MAX_SCRIBBLE_POINTS} are accepted over all polylines")
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ScribbleError(f"scribble width must be a number of pixels, got {width!r}") from None
    if not (math.isfinite(w) and 0.0 < w <= MAX_SCRIBBLE_WIDTH):
        raise ScribbleError(f"scribble width {width!r} is out of range; accepted (0, {MAX_SCRIBBLE_WIDTH:g}] pixels")
    if size is not None:
        iw, ih = size
        for k, line in enumerate(out):
            bad = [p for p in line if not (0.0 <= p[0] <= iw and 0.0 <= p[1] <= ih)]
            if bad:
                raise ScribbleError(
                    f"scribble polyline {k} has point {list(bad[0])} outside the {iw}x{ih} image; "
                    "points are pixels of the original image"
                )
    return out, w


def rasterize_scribble(lines: Any, width: Any, size: tuple[int, int]) -> np.ndarray:
    """The scribble's mask on a (w, h) image: (h, w) bool, never empty for a valid scribble."""
    lines, w = check_scribble(lines, width, size)
    iw, ih = size
    canvas = Image.new("L", (iw, ih), 0)
    draw = ImageDraw.Draw(canvas)
    r = w / 2
    for line in lines:
        if len(line) > 1:
            draw.line(line, fill=1, width=max(1, round(w)), joint="curve")
        for x, y in line:  # round caps (and a dot for a one-point polyline)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    mask = np.array(canvas, dtype=bool)
    if not mask.any():  # a pen finer than a pixel: keep the pixels the points fall on
        for x, y in (p for line in lines for p in line):
            mask[min(int(y), ih - 1), min(int(x), iw - 1)] = True
    return mask
