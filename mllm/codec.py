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
# One class slot followed by a run of location tokens, or a bare run of location tokens.
_GROUP_RE = re.compile(r"(?:<cls_(-?\d+)>\s*)?((?:<loc_-?\d+>\s*)+)")


class CodecError(ValueError):
    """A location/class token sequence could not be decoded."""


@dataclass(frozen=True)
class LocationCodec:
    bins: int

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
            raise CodecError(f"expected an even number of coordinates, got {len(xy)}")
        w, h = size
        out = []
        for k, v in enumerate(xy):
            side = w if k % 2 == 0 else h
            out.append(loc_token(self.to_bin(v / side)))
        return "".join(out)

    def encode_box(self, box: Sequence[float], size: tuple[int, int], cls: int | None = None) -> str:
        """xyxy pixel box -> "<cls_k><loc_x1><loc_y1><loc_x2><loc_y2>"."""
        if len(box) != 4:
            raise CodecError(f"a box has 4 coordinates (x1, y1, x2, y2), got {len(box)}")
        if box[2] < box[0] or box[3] < box[1]:
            raise CodecError(f"box {list(box)} has x2 < x1 or y2 < y1")
        prefix = cls_token(cls) if cls is not None else ""
        return prefix + self.encode_points(box, size)

    def encode_polygon(self, xy: Sequence[float], size: tuple[int, int], cls: int | None = None) -> str:
        prefix = cls_token(cls) if cls is not None else ""
        return prefix + self.encode_points(xy, size)

    # ---- decode --------------------------------------------------------------------------
    def decode_points(self, tokens: str, size: tuple[int, int]) -> list[float]:
        """A run of location tokens -> pixel coordinates (bin centres)."""
        stripped = _LOC_RE.sub("", tokens).strip()
        if stripped:
            raise CodecError(f"expected only location tokens, found {stripped!r} in {tokens!r}")
        bins = [int(m) for m in _LOC_RE.findall(tokens)]
        if len(bins) % 2:
            raise CodecError(f"expected pairs of location tokens, found {len(bins)} tokens in {tokens!r}")
        w, h = size
        return [self.from_bin(b) * (w if k % 2 == 0 else h) for k, b in enumerate(bins)]

    def decode_box(self, tokens: str, size: tuple[int, int]) -> list[float]:
        xy = self.decode_points(tokens, size)
        if len(xy) != 4:
            raise CodecError(f"a box needs exactly 4 location tokens, found {len(xy)} in {tokens!r}")
        if xy[2] < xy[0] or xy[3] < xy[1]:
            raise CodecError(f"decoded box {xy} has x2 < x1 or y2 < y1 (tokens {tokens!r})")
        return xy

    def find_groups(self, text: str) -> list[tuple[int | None, str, tuple[int, int]]]:
        """Every (class slot or None, run of location tokens, (start, end) span) in `text`."""
        return [
            (int(m.group(1)) if m.group(1) is not None else None, m.group(2), m.span())
            for m in _GROUP_RE.finditer(text)
        ]


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
