"""Codec between geometry and location tokens.

A coordinate v in [0, 1] (normalised by the image side it lies along) maps to bin
floor(v * B), clamped to B - 1, and back to the bin centre (i + 0.5) / B, so the
round-trip error is at most half a bin. Decoding is strict: a malformed sequence
raises `CodecError` saying what was found and what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mllm.vocab import cls_token, loc_token

_LOC_RE = re.compile(r"<loc_(-?\d+)>")
_CLS_RE = re.compile(r"<cls_(-?\d+)>")
_CLASS_HEAD_RE = re.compile(r"\s*<cls_(-?\d+)>")
# One class slot followed by a run of location tokens, or a bare run of location tokens.
_GROUP_RE = re.compile(r"(?:<cls_(-?\d+)>\s*)?((?:<loc_-?\d+>\s*)+)")


class CodecError(ValueError):
    """A location/class token sequence could not be decoded."""


@dataclass(frozen=True)
class LocationCodec:
    bins: int

    def __post_init__(self) -> None:
        if not isinstance(self.bins, int) or self.bins < 2:
            raise CodecError(f"a location codec needs an integer number of bins >= 2, got {self.bins!r}")

    # ---- scalars -------------------------------------------------------------------------
    def to_bin(self, v: float) -> int:
        if not (v == v) or v < -1e-6 or v > 1 + 1e-6:  # NaN or outside [0, 1]
            raise CodecError(f"normalised coordinate must lie in [0, 1], got {v}")
        return min(int(max(v, 0.0) * self.bins), self.bins - 1)

    def from_bin(self, i: int) -> float:
        if not 0 <= i < self.bins:
            raise CodecError(f"location bin {i} out of range; accepted 0..{self.bins - 1}")
        return (i + 0.5) / self.bins

    # ---- encode --------------------------------------------------------------------------
    def encode_points(self, xy: Sequence[float], size: tuple[int, int]) -> str:
        """Pixel coordinates [x1, y1, x2, y2, ...] on an image of (width, height) -> tokens."""
        if len(xy) % 2:
            raise CodecError(f"expected an even number of coordinates (x, y pairs), got {len(xy)}")
        w, h = check_size(size)
        out = []
        for k, v in enumerate(xy):
            side, axis = (w, "x") if k % 2 == 0 else (h, "y")
            if not (v == v) or v < -1e-6 * side or v > side * (1 + 1e-6):  # NaN or off the image
                raise CodecError(
                    f"{axis} coordinate {v} lies outside the image; accepted 0..{side} for size {size}"
                )
            out.append(loc_token(self.to_bin(min(max(v / side, 0.0), 1.0))))
        return "".join(out)

    def encode_box(self, box: Sequence[float], size: tuple[int, int], cls: int | None = None) -> str:
        """xyxy pixel box -> "<cls_k><loc_x1><loc_y1><loc_x2><loc_y2>"."""
        if len(box) != 4:
            raise CodecError(f"a box has 4 coordinates (x1, y1, x2, y2), got {len(box)}")
        if box[2] < box[0] or box[3] < box[1]:
            raise CodecError(f"box {list(box)} has x2 < x1 or y2 < y1")
        return _class_prefix(cls) + self.encode_points(box, size)

    def encode_polygon(self, xy: Sequence[float], size: tuple[int, int], cls: int | None = None) -> str:
        """Flat pixel polygon [x1, y1, ..., xN, yN] (N >= 3) -> "<cls_k>" + 2N location tokens."""
        if len(xy) % 2 or len(xy) < 6:
            raise CodecError(
                f"a polygon needs N >= 3 (x, y) points, i.e. an even count >= 6, got {len(xy)} coordinates"
            )
        return _class_prefix(cls) + self.encode_points(xy, size)

    def encode_point(self, xy: Sequence[float], size: tuple[int, int]) -> str:
        """(x, y) pixel point -> two location tokens."""
        if len(xy) != 2:
            raise CodecError(f"a point has 2 coordinates (x, y), got {len(xy)}")
        return self.encode_points(xy, size)

    # ---- decode --------------------------------------------------------------------------
    def decode_points(self, tokens: str, size: tuple[int, int]) -> list[float]:
        """A run of location tokens -> pixel coordinates (bin centres)."""
        stripped = _LOC_RE.sub("", tokens).strip()
        if stripped:
            raise CodecError(f"expected only location tokens, found {stripped!r} in {tokens!r}")
        bins = [int(m) for m in _LOC_RE.findall(tokens)]
        if len(bins) % 2:
            raise CodecError(f"expected pairs of location tokens, found {len(bins)} tokens in {tokens!r}")
        w, h = check_size(size)
        return [self.from_bin(b) * (w if k % 2 == 0 else h) for k, b in enumerate(bins)]

    def decode_box(self, tokens: str, size: tuple[int, int]) -> list[float]:
        xy = self.decode_points(tokens, size)
        if len(xy) != 4:
            raise CodecError(f"a box needs exactly 4 location tokens, found {len(xy)} in {tokens!r}")
        if xy[2] < xy[0] or xy[3] < xy[1]:
            raise CodecError(f"decoded box {xy} has x2 < x1 or y2 < y1 (tokens {tokens!r})")
        return xy

    def decode_polygon(self, tokens: str, size: tuple[int, int]) -> list[tuple[float, float]]:
        """2N location tokens (N >= 3) -> [(x, y), ...] in pixels."""
        xy = self.decode_points(tokens, size)
        if len(xy) < 6:
            raise CodecError(
                f"a polygon needs at least 3 points (6 location tokens), found {len(xy)} in {tokens!r}"
            )
        return list(zip(xy[0::2], xy[1::2], strict=True))

    def decode_point(self, tokens: str, size: tuple[int, int]) -> tuple[float, float]:
        xy = self.decode_points(tokens, size)
        if len(xy) != 2:
            raise CodecError(f"a point needs exactly 2 location tokens, found {len(xy)} in {tokens!r}")
        return xy[0], xy[1]

    def decode_class_box(
        self, tokens: str, size: tuple[int, int], binding: dict[int, str]
    ) -> tuple[str, list[float]]:
        """ "<cls_k>" + 4 location tokens -> (bound category name, xyxy pixel box)."""
        m = _CLASS_HEAD_RE.match(tokens)
        if m is None:
            raise CodecError(f"expected a class slot <cls_k> followed by 4 location tokens, found {tokens!r}")
        label = lookup_class(binding, int(m.group(1)))
        return label, self.decode_box(tokens[m.end() :], size)

    def find_groups(self, text: str) -> list[tuple[int | None, str, tuple[int, int]]]:
        """Every (class slot or None, run of location tokens, (start, end) span) in `text`."""
        return [
            (int(m.group(1)) if m.group(1) is not None else None, m.group(2), m.span())
            for m in _GROUP_RE.finditer(text)
        ]


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """An image size (width, height) with both sides positive."""
    if len(size) != 2 or not all(s > 0 for s in size):
        raise CodecError(f"image size must be (width, height) with both sides > 0, got {tuple(size)}")
    return size[0], size[1]


def _class_prefix(cls: int | None) -> str:
    if cls is not None and cls < 0:
        raise CodecError(f"class slot must be >= 0, got {cls}")
    return cls_token(cls) if cls is not None else ""


def bind_classes(categories: Sequence[str], slots: int) -> dict[int, str]:
    """Bind class slots to the categories a request lists, in order ("cat, dog" -> {0: cat, 1: dog})."""
    names = [c.strip() for c in categories if c.strip()]
    if not names:
        raise CodecError("a class binding needs at least one category name")
    if len(names) > slots:
        raise CodecError(f"{len(names)} categories given, but only {slots} class slots exist")
    if len(set(names)) != len(names):
        raise CodecError(f"duplicate category names in {names}")
    return dict(enumerate(names))


def lookup_class(binding: dict[int, str], slot: int) -> str:
    if slot not in binding:
        raise CodecError(f"class slot <cls_{slot}> is not bound; bound slots: {sorted(binding)}")
    return binding[slot]


def class_slots_in(text: str) -> list[int]:
    return [int(m) for m in _CLS_RE.findall(text)]
