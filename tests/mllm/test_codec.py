"""LocationCodec: round trips within half a bin, strict decoding, class binding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mllm.codec import CodecError, LocationCodec, bind_classes, class_slots_in, lookup_class
from mllm.vocab import loc_token

SETTINGS = settings(max_examples=150, deadline=None)
sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))
bins_st = st.sampled_from([2, 7, 32, 100, 1000])
unit = st.floats(0.0, 1.0, allow_nan=False)


def _half_bin(side: float, bins: int) -> float:
    return side / (2 * bins) + 1e-9 * side


@SETTINGS
@given(bins=bins_st, size=sizes, a=st.tuples(unit, unit), b=st.tuples(unit, unit))
def test_box_round_trip_within_half_bin(bins: int, size: tuple[int, int], a, b) -> None:
    w, h = size
    box = [min(a[0], b[0]) * w, min(a[1], b[1]) * h, max(a[0], b[0]) * w, max(a[1], b[1]) * h]
    codec = LocationCodec(bins)
    out = codec.decode_box(codec.encode_box(box, size), size)
    for k, (got, want) in enumerate(zip(out, box, strict=True)):
        side = w if k % 2 == 0 else h
        assert abs(got - want) <= _half_bin(side, bins)


@SETTINGS
@given(bins=bins_st, size=sizes, pts=st.lists(st.tuples(unit, unit), min_size=3, max_size=12))
def test_polygon_round_trip_within_half_bin(bins: int, size: tuple[int, int], pts) -> None:
    w, h = size
    flat = [v for x, y in pts for v in (x * w, y * h)]
    codec = LocationCodec(bins)
    tokens = codec.encode_polygon(flat, size, cls=3)
    assert tokens.startswith("<cls_3>") and tokens.count("<loc_") == 2 * len(pts)
    out = codec.decode_polygon(tokens.removeprefix("<cls_3>"), size)
    assert len(out) == len(pts)
    for (gx, gy), (x, y) in zip(out, pts, strict=True):
        assert abs(gx - x * w) <= _half_bin(w, bins)
        assert abs(gy - y * h) <= _half_bin(h, bins)


@SETTINGS
@given(bins=bins_st, size=sizes, p=st.tuples(unit, unit))
def test_point_round_trip_within_half_bin(bins: int, size: tuple[int, int], p) -> None:
    w, h = size
    codec = LocationCodec(bins)
    x, y = codec.decode_point(codec.encode_point([p[0] * w, p[1] * h], size), size)
    assert abs(x - p[0] * w) <= _half_bin(w, bins) and abs(y - p[1] * h) <= _half_bin(h, bins)


def test_bins_are_floor_with_last_bin_clamped() -> None:
    codec = LocationCodec(10)
    assert codec.encode_box([0, 0, 100, 50], (100, 50)) == "".join(loc_token(i) for i in (0, 0, 9, 9))
    assert codec.encode_points([9.99, 10.0], (100, 100)) == loc_token(0) + loc_token(1)
    assert codec.from_bin(9) == pytest.approx(0.95)


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        ("<loc_1><loc_2><loc_3>", "pairs"),  # odd count
        ("<loc_1><loc_2>", "exactly 4"),  # wrong count for a box
        ("<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>", "exactly 4"),
        ("<loc_1><loc_2><loc_32><loc_4>", "out of range"),  # bin == B
        ("<loc_-1><loc_2><loc_3><loc_4>", "out of range"),
        ("<loc_5><loc_2><loc_3><loc_4>", "x2 < x1"),
        ("<loc_1><loc_5><loc_3><loc_4>", "y2 < y1"),
        ("<loc_1><loc_2> cat <loc_3><loc_4>", "only location tokens"),  # stray text
        ("<cls_0><loc_1><loc_2><loc_3><loc_4>", "only location tokens"),  # class slot is not a location
    ],
)
def test_decode_box_rejects_malformed(tokens: str, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        LocationCodec(32).decode_box(tokens, (64, 64))


def test_decode_polygon_and_point_counts() -> None:
    codec = LocationCodec(32)
    with pytest.raises(CodecError, match="at least 3 points"):
        codec.decode_polygon("<loc_1><loc_2><loc_3><loc_4>", (32, 32))
    with pytest.raises(CodecError, match="exactly 2"):
        codec.decode_point("<loc_1><loc_2><loc_3><loc_4>", (32, 32))
    assert codec.decode_point(" <loc_0> <loc_31> ", (32, 64)) == (
        0.5,
        63.0,
    )  # whitespace between tokens is fine


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.encode_box([1, 2, 3], (10, 10)), "4 coordinates"),
        (lambda c: c.encode_box([5, 2, 3, 4], (10, 10)), "x2 < x1"),
        (lambda c: c.encode_box([1, 2, 11, 4], (10, 10)), "outside the image"),
        (lambda c: c.encode_box([1, 2, 3, 4], (0, 10)), "both sides > 0"),
        (lambda c: c.encode_points([1, 2, 3], (10, 10)), "even number"),
        (lambda c: c.encode_polygon([1, 2, 3, 4], (10, 10)), "N >= 3"),
        (lambda c: c.encode_point([float("nan"), 1], (10, 10)), "outside the image"),
        (lambda c: c.encode_box([1, 2, 3, 4], (10, 10), cls=-1), "slot must be >= 0"),
        (lambda c: c.to_bin(1.5), r"\[0, 1\]"),
    ],
)
def test_encode_rejects_bad_geometry(call, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        call(LocationCodec(32))


def test_codec_needs_two_bins() -> None:
    with pytest.raises(CodecError, match="bins >= 2"):
        LocationCodec(1)


def test_class_binding_and_lookup() -> None:
    binding = bind_classes([" cat", "dog ", "", "red circle"], slots=4)
    assert binding == {0: "cat", 1: "dog", 2: "red circle"}
    assert lookup_class(binding, 2) == "red circle"
    with pytest.raises(CodecError, match=r"<cls_3> is not bound; bound slots: \[0, 1, 2\]"):
        lookup_class(binding, 3)
    with pytest.raises(CodecError, match="only 2 class slots"):
        bind_classes(["a", "b", "c"], slots=2)
    with pytest.raises(CodecError, match="duplicate"):
        bind_classes(["cat", "cat"], slots=4)
    with pytest.raises(CodecError, match="at least one"):
        bind_classes([" ", ""], slots=4)


def test_decode_class_box_uses_binding() -> None:
    codec = LocationCodec(32)
    binding = bind_classes(["cat", "dog"], slots=8)
    tokens = codec.encode_box([4, 8, 20, 30], (32, 32), cls=1)
    label, box = codec.decode_class_box(tokens, (32, 32), binding)
    assert label == "dog" and box == [4.5, 8.5, 20.5, 30.5]
    with pytest.raises(CodecError, match="<cls_5> is not bound"):
        codec.decode_class_box(tokens.replace("<cls_1>", "<cls_5>"), (32, 32), binding)
    with pytest.raises(CodecError, match="class slot <cls_k> followed"):
        codec.decode_class_box(tokens.replace("<cls_1>", ""), (32, 32), binding)


def test_find_groups_spans_and_slots() -> None:
    codec = LocationCodec(32)
    text = "a <cls_0><loc_1><loc_2><loc_3><loc_4>, b <loc_5><loc_6>."
    groups = codec.find_groups(text)
    assert [(g[0], g[1].count("<loc_")) for g in groups] == [(0, 4), (None, 2)]
    assert text[groups[1][2][0] : groups[1][2][1]] == "<loc_5><loc_6>"
    assert class_slots_in(text) == [0]
