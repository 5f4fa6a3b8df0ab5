"""Task metrics beyond COCO AP: grounding Acc@0.5, VQA exact match, caption attribute F1,
generation / editing accuracy through the ShapesWorld oracle, and routing accuracy.

Every metric returns a float in [0, 1] averaged over samples, and raises on mismatched lengths
or empty inputs (an average over nothing is undefined, not 0 or 1).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from shapesworld.constants import COLORS, KINDS
from shapesworld.oracle import read_objects

Box = Sequence[float]  # x1, y1, x2, y2 pixels
Reader = Callable[[Any], Sequence[Any]]  # image -> oracle objects with kind, color, box


# ---- shared helpers -----------------------------------------------------------------------


def _check_lengths(name: str, preds: Sequence[Any], refs: Sequence[Any]) -> int:
    if len(preds) != len(refs):
        raise ValueError(
            f"{name}: {len(preds)} predictions but {len(refs)} references; they must pair up one to one"
        )
    if not preds:
        raise ValueError(f"{name}: no samples to score")
    return len(preds)


def _field(obj: Any, name: str) -> Any:
    """`obj[name]` for mappings, `obj.name` otherwise (oracle objects, scene objects, dicts all work)."""
    if isinstance(obj, Mapping):
        if name not in obj:
            raise KeyError(f"object {obj!r:.120} has no {name!r} key")
        return obj[name]
    if not hasattr(obj, name):
        raise AttributeError(f"object of type {type(obj).__name__} has no {name!r} attribute")
    return getattr(obj, name)


def _default_reader() -> Reader:
    return read_objects


def iou_xyxy(a: np.ndarray | Sequence[Box], b: np.ndarray | Sequence[Box]) -> np.ndarray:
    """Pairwise IoU of boxes (x1, y1, x2, y2): a (N, 4), b (M, 4) -> (N, M). Degenerate boxes give 0."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = np.clip(rb - lt, 0, None).prod(-1)  # (N, M)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)  # (N,)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)  # (M,)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# ---- grounding ----------------------------------------------------------------------------


def grounding_acc50(pred_boxes: Sequence[Box | None], gt_boxes: Sequence[Box]) -> float:
    """Fraction of samples whose predicted box has IoU >= 0.5 with the ground-truth box.

    One box per sample (the referent); a missing prediction (None or empty) counts as wrong.
    """
    n = _check_lengths("grounding_acc50", pred_boxes, gt_boxes)
    hits = 0
    for pred, gt in zip(pred_boxes, gt_boxes, strict=True):
        if pred is None or len(pred) == 0:
            continue
        hits += bool(iou_xyxy([pred], [gt])[0, 0] >= 0.5)
    return hits / n


# ---- VQA ----------------------------------------------------------------------------------

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip
_WORD_TO_DIGIT = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_ARTICLES = {"a", "an", "the"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation -> space, articles dropped, number words -> digits, spaces collapsed.

    "The Three." -> "3"; "a red circle" -> "red circle".
    """
    words = text.lower().translate(_PUNCT).split()
    return " ".join(_WORD_TO_DIGIT.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(preds: Sequence[str], answers: Sequence[str | Sequence[str]]) -> float:
    """Exact-match accuracy after `normalize_answer`; an answer may be a list of accepted answers."""
    n = _check_lengths("vqa_accuracy", preds, answers)
    hits = 0
    for pred, ans in zip(preds, answers, strict=True):
        accepted = [ans] if isinstance(ans, str) else list(ans)
        hits += normalize_answer(pred) in {normalize_answer(a) for a in accepted}
    return hits / n


# ---- captions -----------------------------------------------------------------------------

_KIND_OF_WORD: dict[str, str] = {
    **{k: k for k in KINDS},
    **{k + ("es" if k.endswith(("x", "s", "sh", "ch")) else "s"): k for k in KINDS},
}
_COUNT_OF_WORD: dict[str, int] = {**{w: i for i, w in enumerate(NUMBER_WORDS)}, "a": 1, "an": 1, "single": 1}
_WORD_RE = re.compile(r"[a-z]+|\d+")
Fact = tuple[Any, ...]


def caption_facts(caption: str) -> set[Fact]:
    """The (colour, kind, count) facts a caption states. See `caption_f1` for the definition."""
    facts: set[Fact] = set()
    count: int | None = None
    color: str | None = None
    for word in _WORD_RE.findall(caption.lower()):
        if word in COLORS:
            facts.add(("color", word))
            color = word
        elif word.isdigit() or word in _COUNT_OF_WORD:
            count, color = (int(word) if word.isdigit() else _COUNT_OF_WORD[word]), None
        elif word in _KIND_OF_WORD:
            kind = _KIND_OF_WORD[word]
            facts.add(("kind", kind))
            if count is not None and color is not None:
                facts.add(("count", color, kind, count))
            count, color = None, None
    return facts


def _objects_of(scene_or_objects: Any) -> Sequence[Any]:
    """A scene (anything with `.objects`) or a list of objects (dicts or objects with kind, color)."""
    if hasattr(scene_or_objects, "objects"):
        return scene_or_objects.objects
    if isinstance(scene_or_objects, Mapping) and "objects" in scene_or_objects:
        return scene_or_objects["objects"]
    return scene_or_objects


def present_facts(scene_or_objects: Any) -> set[Fact]:
    """The facts true of a scene: its colours, its kinds, and each (colour, kind) group's size."""
    groups = Counter((_field(o, "color"), _field(o, "kind")) for o in _objects_of(scene_or_objects))
    facts: set[Fact] = {("count", c, k, n) for (c, k), n in groups.items()}
    facts |= {("color", c) for c, _ in groups} | {("kind", k) for _, k in groups}
    return facts


def _f1(mentioned: set[Fact], present: set[Fact]) -> float:
    tp = len(mentioned & present)
    if tp == 0:
        return 1.0 if not mentioned and not present else 0.0
    precision, recall = tp / len(mentioned), tp / len(present)
    return 2 * precision * recall / (precision + recall)


def caption_f1(pred_captions: Sequence[str], scenes_or_object_lists: Sequence[Any]) -> float:
    """Mean per-caption F1 between the facts a caption mentions and the facts present in its scene.

    Facts are of three sorts:
      ("color", c)            colour c (a name in constants.COLORS) is mentioned / present;
      ("kind", k)             kind k (constants.KINDS, singular or plural) is mentioned / present;
      ("count", c, k, n)      there are exactly n objects of colour c and kind k. A caption states
                              this with a phrase "<count> <colour> ... <kind>", where count is a
                              digit, a number word up to twenty, or "a"/"an"/"single" (= 1), and
                              the colour is the last one named between the count and the kind
                              ("two small red circles" -> ("count", "red", "circle", 2)). Phrases
                              without a count or a colour state no count fact.
    A scene's facts are its colours, its kinds and one count fact per (colour, kind) group, so a
    caption listing every group with its count ("a red circle and two blue squares") scores 1.0;
    a wrong colour, kind or count lowers both precision and recall. Scenes are objects with
    `.objects`, dicts with "objects", or lists of objects with kind and color (fields or keys).
    """
    n = _check_lengths("caption_f1", pred_captions, scenes_or_object_lists)
    total = sum(
        _f1(caption_facts(c), present_facts(s))
        for c, s in zip(pred_captions, scenes_or_object_lists, strict=True)
    )
    return total / n


# ---- generation and editing (oracle) ------------------------------------------------------


def _kind_colors(objects: Sequence[Any]) -> Counter[tuple[str, str]]:
    return Counter((_field(o, "kind"), _field(o, "color")) for o in objects)


def generation_accuracy(
    images: Sequence[Any], expected_objects: Sequence[Sequence[Any]], reader: Reader | None = None
) -> float:
    """Fraction of generated images in which the oracle finds exactly the expected objects:
    the multiset of (kind, colour) read from the image equals the expected multiset (every expected
    object found, nothing extra). Expected objects are dicts or objects with kind and color."""
    n = _check_lengths("generation_accuracy", images, expected_objects)
    read = reader or _default_reader()
    hits = sum(
        _kind_colors(read(img)) == _kind_colors(exp)
        for img, exp in zip(images, expected_objects, strict=True)
    )
    return hits / n


def object_f1(
    images: Sequence[Any], expected_objects: Sequence[Sequence[Any]], reader: Reader | None = None,
    key: str = "object",
) -> float:
    """Micro F1 of the (kind, colour) multisets the oracle reads against the expected ones, pooled over the
    images: partial credit where `generation_accuracy` gives none (two of three objects right count).
    `key`: "object" matches (kind, colour) pairs, "color" colours alone, "kind" kinds alone."""
    n = _check_lengths("object_f1", images, expected_objects)
    pick = {"object": lambda k: k, "color": lambda k: k[1], "kind": lambda k: k[0]}
    if key not in pick:
        raise ValueError(f"object_f1: unknown key {key!r}; accepted: {', '.join(pick)}")
    read = reader or _default_reader()
    tp = total = 0
    for img, exp in zip(images, expected_objects, strict=True):
        got, want = (Counter(pick[key](k) for k in _kind_colors(objs).elements()) for objs in (read(img), exp))
        tp += sum((got & want).values())
        total += sum(got.values()) + sum(want.values())
    return 2 * tp / total if total else (1.0 if n else 0.0)


def _pair_ok(got: Any, want: Any) -> bool:
    """Same kind and colour, and (when `want` has a box) box IoU >= 0.5: it did not move wrongly."""
    if (_field(got, "kind"), _field(got, "color")) != (_field(want, "kind"), _field(want, "color")):
        return False
    want_box = want.get("box") if isinstance(want, Mapping) else getattr(want, "box", None)
    return want_box is None or bool(iou_xyxy([_field(got, "box")], [want_box])[0, 0] >= 0.5)


def objects_match(got: Sequence[Any], want: Sequence[Any]) -> bool:
    """True if `got` and `want` pair up one to one under `_pair_ok` (Hungarian matching)."""
    if len(got) != len(want):
        return False
    if not want:
        return True
    ok = np.array([[_pair_ok(g, w) for w in want] for g in got])  # (N, N)
    rows, cols = linear_sum_assignment(-ok.astype(float))
    return bool(ok[rows, cols].all())


def _is_object_list(target: Any) -> bool:
    """A list/tuple of objects or a scene (has `.objects`), as opposed to an image to read."""
    return isinstance(target, list | tuple) or hasattr(target, "objects")


def editing_accuracy(
    edited_images: Sequence[Any], target_images_or_expected: Sequence[Any], reader: Reader | None = None
) -> float:
    """Fraction of edits whose result holds the target's objects.

    A target is an image (read by the oracle like the edited one), a scene (its `.objects`), or a
    list of expected objects with kind, color and optional box (x1, y1, x2, y2; None = anywhere,
    e.g. an added object). An edit is correct when the oracle's objects of the edited image pair one to one with
    the target's: same kind and colour, and box IoU >= 0.5 wherever the target fixes a box (so
    untouched objects must stay put and a moved object must land where the target puts it).
    """
    n = _check_lengths("editing_accuracy", edited_images, target_images_or_expected)
    read = reader or _default_reader()
    hits = 0
    for img, target in zip(edited_images, target_images_or_expected, strict=True):
        want = list(_objects_of(target)) if _is_object_list(target) else read(target)
        hits += objects_match(list(read(img)), want)
    return hits / n


# ---- routing ------------------------------------------------------------------------------


def _route_name(route: str) -> str:
    name = route.strip().strip("[]")
    if not name or not name.isupper():
        raise ValueError(f"bad route {route!r}; accepted: a route name like 'DET' or token like '[DET]'")
    return name


def routing_accuracy(
    pred_route_lists: Sequence[Sequence[str]],
    expected_route_lists: Sequence[Sequence[str]],
    as_set: bool = False,
) -> float:
    """Fraction of samples whose emitted routes equal the expected ones as a multiset (order ignored,
    repeats counted), or as a set with `as_set=True`. Routes may be names ("DET") or tokens ("[DET]")."""
    n = _check_lengths("routing_accuracy", pred_route_lists, expected_route_lists)
    collect = set if as_set else Counter
    hits = 0
    for pred, exp in zip(pred_route_lists, expected_route_lists, strict=True):
        hits += collect(map(_route_name, pred)) == collect(map(_route_name, exp))
    return hits / n
