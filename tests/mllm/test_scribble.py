"""Scribble region prompts: polylines with a pen width -> masks, validated with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from mllm.scribble import MAX_SCRIBBLE_POINTS, ScribbleError, check_scribble, rasterize_scribble


def test_a_polyline_becomes_a_stroke_of_its_width():
    mask = rasterize_scribble([[[10, 20], [50, 20]]], width=6, size=(64, 40))
    assert mask.shape == (40, 64)
    rows = np.nonzero(mask[:, 30])[0]
    assert 5 <= len(rows) <= 7 and rows.min() >= 16 and rows.max() <= 23  # 6 px pen across y = 20
    assert mask[20, 8] and not mask[20, 56]  # round cap reaches 3 px beyond the end point, no further
    assert not mask[5, 30]


def test_two_polylines_and_a_single_point_dot():
    mask = rasterize_scribble([[[5, 5], [5, 30]], [[40, 10]]], width=4, size=(48, 36))
    assert mask[18, 5] and mask[10, 40] and not mask[18, 40]
    dot = rasterize_scribble([[[0.2, 0.3]]], width=0.5, size=(8, 8))  # finer than a pixel: the pixel holding it
    assert dot.sum() >= 1 and dot[0, 0]


@pytest.mark.parametrize(
    ("lines", "width", "match"),
    [
        ([], 4, "at least one polyline"),
        ([[]], 4, "polyline 0 is empty"),
        ([[[1, 2, 3]]], 4, r"each point is \[x, y\]"),
        ([[["a", 2]]], 4, "must be numbers"),
        ([[[float("nan"), 2]]], 4, "non-finite"),
        ([[[1, 2]]] * 33, 4, "at most 32 are accepted"),
        ([[[1, 2]] * (MAX_SCRIBBLE_POINTS + 1)], 4, f"at most {MAX_SCRIBBLE_POINTS} are accepted"),
        ([[[1, 2]]], 0, r"accepted \(0, 256\] pixels"),
        ([[[1, 2]]], 300, r"accepted \(0, 256\] pixels"),
        ([[[1, 2]]], "wide", "must be a number of pixels"),
        ([[[1, 2], [70, 5]]], 4, r"point \[70.0, 5.0\] outside the 64x40 image"),
    ],
)
def test_bad_scribbles_say_what_is_accepted(lines, width, match):
    with pytest.raises(ScribbleError, match=match):
        check_scribble(lines, width, (64, 40))
