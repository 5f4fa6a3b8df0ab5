"""Native localisation: generated text with class/location tokens -> results in image pixel coordinates.

Rules (answer conventions in mllm.vocab):
  <cls_k> + 4 location tokens          detection (label bound to slot k), unless mode="polygon"
  <cls_k> + 2N location tokens, N >= 3 polygon
  4 bare location tokens               grounding box for the phrase before it (4k tokens: k boxes)
  2 bare location tokens               point for the phrase before it
Malformed groups never crash a response: they are collected in `errors` (or raise with strict=True).

Instructions: `parse_class_list` reads the categories to bind to class slots, `localize_request` whether
polygons are wanted and with how many points ("Segment each star with a 12-point polygon" -> polygon, 12;
DEFAULT_POLYGON_POINTS when none is named; POLYGON_MIN_POINTS..POLYGON_MAX_POINTS or a LocalizeError).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from mllm.codec import CodecError, LocationCodec, check_size, lookup_class
from mllm.vocab import phrase_before

Box = list[float]  # x1, y1, x2, y2 in pixels
Point = tuple[float, float]

# A class slot with whatever location tokens follow it (possibly none), or a bare run of location tokens.
_UNIT_RE = re.compile(r"<cls_(-?\d+)>\s*((?:<loc_-?\d+>\s*)*)|((?:<loc_-?\d+>\s*)+)")
_LOC_COUNT_RE = re.compile(r"<loc_-?\d+>")


@dataclass
class NativeResults:
    detections: list[tuple[str, Box]] = field(default_factory=list)  # (category, box)
    boxes: list[tuple[str, Box]] = field(default_factory=list)  # grounding: (phrase, box)
    polygons: list[tuple[str, list[Point]]] = field(default_factory=list)  # (category, [(x, y), ...])
    points: list[tuple[str, Point]] = field(default_factory=list)  # (phrase, (x, y))
    errors: list[str] = field(default_factory=list)  # one line per malformed group

    @property
    def empty(self) -> bool:
        return not (self.detections or self.boxes or self.polygons or self.points)


def parse_native(
    text: str,
    image_size: tuple[int, int],
    binding: dict[int, str] | None,
    bins: int,
    *,
    mode: Literal["auto", "polygon"] = "auto",
    strict: bool = False,
) -> NativeResults:
    """Every class/location group in `text` -> NativeResults on an image of (width, height) pixels."""
    if mode not in ("auto", "polygon"):
        raise ValueError(f"mode must be 'auto' or 'polygon', got {mode!r}")
    check_size(image_size)
    codec, out = LocationCodec(bins), NativeResults()
    for m in _UNIT_RE.finditer(text):
        try:
            if m.group(1) is not None:
                _add_classed(out, codec, int(m.group(1)), m.group(2), image_size, binding, mode)
            else:
                _add_bare(out, codec, m.group(3), phrase_before(text[: m.start()]), image_size)
        except CodecError as err:
            if strict:
                raise
            out.errors.append(f"{m.group(0).strip()!r}: {err}")
    return out


def _add_classed(
    out: NativeResults,
    codec: LocationCodec,
    slot: int,
    locs: str,
    size: tuple[int, int],
    binding: dict[int, str] | None,
    mode: str,
) -> None:
    if binding is None:
        raise CodecError(
            f"class slot <cls_{slot}> found but no class binding was given (the request listed no categories)"
        )
    label = lookup_class(binding, slot)
    n = len(_LOC_COUNT_RE.findall(locs))
    if n == 4 and mode == "auto":
        out.detections.append((label, codec.decode_box(locs, size)))
    elif n >= 6 and n % 2 == 0:
        out.polygons.append((label, codec.decode_polygon(locs, size)))
    else:
        accepted = (
            "2N with N >= 3 (a polygon)" if mode == "polygon" else "4 (a box) or 2N with N >= 3 (a polygon)"
        )
        raise CodecError(f"<cls_{slot}> is followed by {n} location tokens; accepted {accepted}")


def _add_bare(
    out: NativeResults, codec: LocationCodec, locs: str, phrase: str, size: tuple[int, int]
) -> None:
    tokens = _LOC_COUNT_RE.findall(locs)
    if len(tokens) == 2:
        out.points.append((phrase, codec.decode_point(locs, size)))
    elif len(tokens) % 4 == 0:
        boxes = [codec.decode_box("".join(tokens[i : i + 4]), size) for i in range(0, len(tokens), 4)]
        out.boxes += [(phrase, box) for box in boxes]
    else:
        raise CodecError(
            f"{len(tokens)} bare location tokens; accepted 2 (a point) or 4 per box (grounding), "
            "or a class slot <cls_k> first (detection, polygon)"
        )


def strip_location_tokens(text: str) -> str:
    """The answer without class/location tokens, for display ("a cat<loc_1>...<loc_4>." -> "a cat.")."""
    return re.sub(r"[ \t]{2,}", " ", re.sub(r"<(?:cls|loc)_-?\d+>", "", text)).strip()


# ---- class lists in instructions ------------------------------------------------------------
_SPECIAL_RE = re.compile(r"<[a-z]+(?:_-?\d+)?>|\[[A-Z]+(?:_Q)?\]")
_TRIGGER_RE = re.compile(
    r"\b(?:detect|find|locate|segment|identify|mark|outline|show(?:\s+me)?|box|label|categories|classes|mask|spot"
    r"|isolate|pinpoint|(?:cut|carve|pick)\s+out|track\s+down|look\s+for|around|where\s+are"
    r"|put\s+(?:an?\s+)?(?:bounding\s+)?box(?:es)?\s+on)\b\s*",
    re.I,
)
_FILLER_RE = re.compile(
    r"^(?:(?:the|a|an|all|any|every|each|following|instances|objects|occurrences|categories|category|classes|class"
    r"|of)\b\s*)+",
    re.I,
)
_TAIL_RE = re.compile(
    r"\s+(?:in|on|within|from)\s+(?:the|this|that|these|each|my)\s+(?:image|picture|photo|snapshot|scene|frame)s?\b.*"
    r"|\s+(?:as|with|using|by)\s+(?:an?\s+)?(?:polygons?|outlines?|contours?|box(?:es)?|bounding\s+box(?:es)?|masks?|points?)\b.*",
    re.I | re.S,
)
_INTRO_RE = re.compile(r"\b(?:each|every|for(?!\s+me\b)|of)\b\s*", re.I)
# Trailing clauses that say how to answer, not what to find: "... and give their box coordinates".
_CLAUSE_TAIL_RE = re.compile(r"\s+(?:and\s+(?:give|reply|return|answer|write|output|report)\b).*", re.I | re.S)
_FORMAT_TAIL_RE = re.compile(r"\s+(?:as|with|in|using)\s+(?:box\s+)?coordinates\b.*", re.I | re.S)
# Politeness after the list: "... circle and square, please" / "... for me" / "... when you get a chance" /
# "... right away" / "... if possible".
_POLITE_TAIL_RE = re.compile(
    r"[\s,]+(?:please|thanks|thank\s+you|cheers|for\s+me|if\s+you\s+(?:don't|do\s+not)\s+mind|if\s+you\s+can|"
    r"if\s+possible|when\s+you\s+get\s+a\s+chance|right\s+away|now|quickly|as\s+soon\s+as\s+possible|asap)\b.*",
    re.I | re.S,
)
_LIST_SPLIT_RE = re.compile(r"\s*(?:,|;|&|\band\b|\bor\b)\s*", re.I)
# An interjection before the request: "ok, give the keypoints of each star" / "Hey! find the cats".
_LEAD_RE = re.compile(r"^\s*(?:ok(?:ay)?|hey|hi|hello|so|well|right|now)\s*[,!:]\s*", re.I)


def parse_class_list(instruction: str) -> list[str]:
    """Categories an instruction lists, in order: "detect cat, dog and bird" -> ["cat", "dog", "bird"].

    Answer-format clauses never become categories: "Outline every cross and circle with a polygon of 8 points."
    -> ["cross", "circle"]. Also "Find: red circle, blue star.", "Please detect the following objects: cat, dog in the image.",
    "Report the coordinates of each cat, dog and bird." and "Detect cat and dog and give their boxes."
    Returns [] when the instruction holds no list (then no class slots are bound).
    """
    text = _LEAD_RE.sub("", _FORMAT_TAIL_RE.sub("", _FORMAT_RE.sub(" ", _SPECIAL_RE.sub(" ", instruction))))
    m = _TRIGGER_RE.search(text)
    rest = text[m.end() :] if m else text
    if ":" in rest:  # "detect the following: a, b" / "Find: a, b"
        rest = rest.split(":", 1)[1]
    else:  # "... coordinates of each a, b": the list starts after the last "of/each/every/for" before the list's
        # first separator ("find every a and every b" starts at the first "every")
        intro = list(_INTRO_RE.finditer(rest))
        if intro:
            sep = re.compile(r"[,;]|\band\b", re.I).search(rest, intro[0].end())
            rest = rest[[m for m in intro if sep is None or m.end() <= sep.start()][-1].end() :]
        elif m is None:
            return []
    rest = _CLAUSE_TAIL_RE.sub("", rest)  # after the list's start, so "do me a favour and give ..." keeps its list
    rest = re.split(r"[.?!\n]", rest.strip(" :"), maxsplit=1)[0]
    rest = _POLITE_TAIL_RE.sub("", _TAIL_RE.sub("", rest))
    names: list[str] = []
    for item in _LIST_SPLIT_RE.split(rest):
        name = _FILLER_RE.sub("", item.strip()).strip() or item.strip()  # "a" alone is a name, not an article
        if name and name.lower() not in (n.lower() for n in names):
            names.append(name)
    return names


# ---- polygons on request: "Segment each star with a 12-point polygon" ------------------------------
POLYGON_MIN_POINTS = 3
POLYGON_MAX_POINTS = 64
DEFAULT_POLYGON_POINTS = 12  # when an instruction asks for polygons without saying how many points

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60})
_NUMBER = r"\d+|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
_UNIT = r"points?|vertex|vertices|vertexes|corners?|coordinate\s+pairs?"
# "12-point", "20 vertices", "8 coordinate pairs", "twelve corners", "6-sided"
_COUNT_RE = re.compile(rf"\b(?P<n>{_NUMBER})(?:\s*-\s*|\s+)(?:{_UNIT})\b", re.I)
# The whole answer-format clause around a count: "with a polygon of 8 points", "as polygons with 8 vertices",
# "a 12-point polygon", "using 20 vertices", "as 8 points". Removed before reading the category list.
_FORMAT_RE = re.compile(
    rf"(?:\b(?:with|using|as|in|of|by|into)\s+)?(?:\b(?:a|an|one|each|single)\s+)?"
    rf"(?:\bpolygons?\s+(?:of|with)\s+)?(?:exactly\s+)?(?:{_COUNT_RE.pattern})"
    rf"(?:\s+(?:polygons?|outlines?|contours?))?",
    re.I,
)
_POLYGON_WORD_RE = re.compile(r"\bpolygons?\b|\boutlines?\b|\bcontours?\b", re.I)


class LocalizeError(ValueError):
    """An instruction asks for native localisation this system cannot give (e.g. a polygon point count out of range)."""


@dataclass(frozen=True)
class LocalizeRequest:
    """How an instruction wants native localisation answered: boxes/points ("auto") or N-point polygons."""

    mode: Literal["auto", "polygon"] = "auto"
    points: int | None = None  # polygon vertex count; set exactly when mode == "polygon"


def requested_points(instruction: str) -> int | None:
    """The polygon point count an instruction names ("a 12-point polygon", "20 vertices"), or None.

    Raises LocalizeError when it names two different counts.
    """
    text = _SPECIAL_RE.sub(" ", instruction)
    counts = []
    for m in _COUNT_RE.finditer(text):
        word = m.group("n").lower()
        n = int(word) if word.isdigit() else _NUMBER_WORDS[word]
        if n not in counts:
            counts.append(n)
    if len(counts) > 1:
        raise LocalizeError(
            f"the instruction asks for polygons of {' and '.join(map(str, counts))} points; "
            "give one point count per request"
        )
    return counts[0] if counts else None


def localize_mode(instruction: str) -> Literal["auto", "polygon"]:
    """ "polygon" when the instruction asks for polygons, outlines or contours, or names a point count
    ("trace each star with 8 points"), so <cls_k> + 4 tokens is not read as a box."""
    text = _SPECIAL_RE.sub(" ", instruction)
    return "polygon" if _POLYGON_WORD_RE.search(text) or _COUNT_RE.search(text) else "auto"


def localize_request(instruction: str, default_points: int = DEFAULT_POLYGON_POINTS) -> LocalizeRequest:
    """The localisation mode of an instruction and, for polygons, the point count (default when none is named).

    Raises LocalizeError when the count lies outside POLYGON_MIN_POINTS..POLYGON_MAX_POINTS.
    """
    if localize_mode(instruction) == "auto":
        return LocalizeRequest()
    n = requested_points(instruction)
    n = default_points if n is None else n
    if not POLYGON_MIN_POINTS <= n <= POLYGON_MAX_POINTS:
        raise LocalizeError(
            f"a polygon of {n} points was asked for; supported point counts are {POLYGON_MIN_POINTS}.."
            f"{POLYGON_MAX_POINTS} (e.g. 'outline each star with a 12-point polygon')"
        )
    return LocalizeRequest("polygon", n)
