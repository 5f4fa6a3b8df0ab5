"""Score a whole SuperLink model on ShapesWorld with every task metric, from one call.

    evaluate_model("shapes", split="val", n=200)
    -> {"det_ap": .., "det_ap50": .., "native_det_ap": .., "seg_ap": .., "grd_acc50": .., "pose_ap": ..,
        "vqa_acc": .., "caption_f1": .., "gen_acc": .., "edit_acc": .., "routing_acc": .., "region_acc": ..,
        "det_ap_agnostic": .., "phrase_acc": .., "poly_ap": .., "poly_count_ok": .., "n": 200, "wall_s": ..}

poly_ap is the mask AP (pycocotools) of the native polygons, rasterised, against the instance masks;
poly_count_ok the fraction of polygons the model wrote (class slot + location tokens) that have exactly
the point count the instruction asked for.

region_acc (answers about a <region> prompt), det_ap_agnostic (class-agnostic [DET] box AP: localisation
alone) and phrase_acc (routed phrases equal to the reference ones) are diagnostics beyond the issue's list,
as are gen_object_f1 and gen_color_f1: the F1 of the (kind, colour) pairs, and of the colours alone, that the
oracle reads in the [GEN] images against the requested ones, pooled over the scenes (partial credit where
gen_acc, all objects exactly, gives none).

`n` is the TOTAL number of scenes, dealt round-robin over the task families in `FAMILIES`
(n=200 gives 16 or 17 scenes per family). Scene k of family f is drawn from
`SeedSequence([SPLIT_SEEDS[split], seed, f, k])`: it never changes, does not depend on `n`
(a larger n only adds scenes), and never coincides with a training sample (those use integer seeds).

Every sample runs through the real path: Request -> Pipeline (batched routed generation ->
link events -> decoders) -> Response. Nothing is teacher-forced unless `teacher_force=True`
(tests and the random-weight demo use that to check the scoring itself).
A metric whose family got no scorable sample is None.

Wording (`wording=`): "template" scores the samples worded from the fixed template lists (the keys above,
unchanged); "heldout" scores the SAME scenes and requests worded with the grammar's held-out part
(shapesworld.grammar: verbs, nouns, politeness frames, connectors, word orders, Title Case, end marks and
typos the training sampler never produces), reported as `<key>_heldout_wording` (routing_acc_heldout_wording,
det_ap_heldout_wording, vqa_acc_heldout_wording, caption_f1_heldout_wording, ...) with
`routing_by_heldout_axis` (routing accuracy of the held-out samples that used each kind of held-out choice:
casing, pre, det_verb, ...); "both" reports both sets.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from evaluation.coco import GtImage, build_coco_gt, coco_ap, coco_results, mask_to_rle, rle_to_mask
from evaluation.metrics import (
    caption_f1,
    editing_accuracy,
    generation_accuracy,
    grounding_acc50,
    iou_xyxy,
    object_f1,
    routing_accuracy,
    vqa_accuracy,
)
from mllm.localize import localize_request, parse_native
from mllm.vocab import phrase_before, route_names_in
from router.pipeline import Pipeline, forced_answer_hook
from router.samples import TaskSample
from router.schemas import Options, RegionPrompt, Request, Response
from shapesworld.constants import SPLIT_SEEDS
from shapesworld.oracle import read_objects
from shapesworld.tasks import make_sample

# New families go at the END: a family's scene seeds depend on its position here.
FAMILIES: tuple[str, ...] = ("detection", "segmentation", "native_detection", "grounding", "keypoints", "vqa",
                             "caption", "generation", "editing", "region", "compound", "polygon")
# Longest answer each family needs (native detection writes 5 tokens + a separator per object).
MAX_NEW_TOKENS: dict[str, int] = {"detection": 48, "segmentation": 48, "native_detection": 128, "grounding": 32,
                                  "keypoints": 48, "vqa": 16, "caption": 64, "generation": 24, "editing": 24,
                                  "region": 16, "compound": 96, "polygon": 320}
PHRASE_FAMILIES = ("detection", "segmentation", "grounding", "keypoints")
AGNOSTIC = "object"  # the one category of class-agnostic AP
AP_THRESHOLD = 0.05  # AP needs the low-score tail of the precision-recall curve
AP_FAMILIES = ("detection", "segmentation", "keypoints", "compound")
METRIC_KEYS: tuple[str, ...] = ("det_ap", "det_ap50", "native_det_ap", "seg_ap", "grd_acc50", "pose_ap", "vqa_acc",
                                "caption_f1", "gen_acc", "edit_acc", "routing_acc", "region_acc", "det_ap_agnostic",
                                "phrase_acc", "poly_ap", "poly_count_ok", "gen_object_f1", "gen_color_f1")
_ROUTE_RE = re.compile(r"\[([A-Z]+)\]")
HELDOUT = "_heldout_wording"  # suffix of the metrics on held-out wordings
HELDOUT_METRIC_KEYS: tuple[str, ...] = tuple(k + HELDOUT for k in METRIC_KEYS)
EVAL_WORDINGS: tuple[str, ...] = ("template", "heldout", "both")


@dataclass
class Scored:
    """One evaluation sample and the model's response to it."""

    family: str
    sample: TaskSample
    response: Response


# ---- samples and requests ------------------------------------------------------------------------
def eval_samples(split: str, n: int, seed: int = 0, image_size: int = 128, location_bins: int = 1000,
                 families: Sequence[str] = FAMILIES, wording: str = "template") -> list[tuple[str, TaskSample]]:
    """`n` (family, sample) pairs, round-robin over `families`, grouped by family, worded as `wording`.

    The scenes and requests do not depend on the wording ("template" or "heldout"), only the instructions do.
    """
    if wording not in ("template", "heldout"):
        raise ValueError(f"unknown evaluation wording {wording!r}; accepted: template, heldout")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLIT_SEEDS)}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown or no task families {unknown}; accepted: {', '.join(FAMILIES)}")
    if n < 1:
        raise ValueError(f"n must be at least 1 (total scenes over {len(families)} task families), got {n}")
    out = []
    for i, family in enumerate(families):
        f = FAMILIES.index(family)  # the seed depends on the family, not on which others are evaluated
        count = n // len(families) + (i < n % len(families))
        for k in range(count):
            rng = np.random.default_rng(np.random.SeedSequence([SPLIT_SEEDS[split], seed, f, k]))
            out.append((family, make_sample(family, rng, image_size, location_bins, wording=wording)))
    return out


def region_prompt(region: dict[str, Any]) -> RegionPrompt:
    """A ShapesWorld region dict ({"box"} | {"point"} | {"mask": HxW bool} | {"scribble", "width"}) -> RegionPrompt
    on image 0."""
    if "scribble" in region:
        return RegionPrompt(scribble={"lines": region["scribble"], "width": region["width"]})
    if "mask" in region:
        return RegionPrompt(mask=mask_to_rle(np.asarray(region["mask"], bool)))
    if "box" in region:
        return RegionPrompt(box=tuple(region["box"]))
    if "point" in region:
        return RegionPrompt(point=tuple(region["point"]))
    raise ValueError(f"region needs one of box, point, mask or scribble; got keys {sorted(region)}")


def to_request(family: str, sample: TaskSample, index: int) -> Request:
    options = Options(
        max_new_tokens=MAX_NEW_TOKENS[family],
        seed=index,  # fixed seeds make [GEN]/[EDIT] reproducible
        score_threshold=AP_THRESHOLD if family in AP_FAMILIES else Options().score_threshold,
    )
    images = [Image.fromarray(sample.image)] if sample.image is not None else []
    regions = [region_prompt(r) for r in sample.regions]
    return Request(images=images, instruction=sample.instruction, regions=regions, options=options)


def run_samples(pipe: Any, pairs: Sequence[tuple[str, TaskSample]], batch_size: int = 16,
                teacher_force: bool = False) -> list[Scored]:
    """Batched pipeline calls, one family per batch (equal decoding options share one generate call)."""
    out: list[Scored] = []
    start = 0
    while start < len(pairs):
        family = pairs[start][0]
        stop = start
        while stop < len(pairs) and stop - start < batch_size and pairs[stop][0] == family:
            stop += 1
        chunk = pairs[start:stop]
        requests = [to_request(f, s, start + i) for i, (f, s) in enumerate(chunk)]
        if teacher_force:
            pipe.logits_hook = forced_answer_hook(pipe.system.model.tokenizer, [s.answer for _, s in chunk])
        try:
            responses = pipe(requests)
        finally:
            pipe.logits_hook = None
        out += [Scored(f, s, r) for (f, s), r in zip(chunk, responses, strict=True)]
        start = stop
    return out


# ---- ground truth helpers ------------------------------------------------------------------------
def objects_of_category(sample: TaskSample, category: str) -> list[Any]:
    """Scene objects a category names: a kind ("circle") or a colour and a kind ("red circle")."""
    parts = category.split()
    return [o for o in sample.scene.objects
            if o.kind == parts[-1] and (len(parts) == 1 or o.color == parts[0])]


def _image_size(sample: TaskSample) -> tuple[int, int]:
    h, w = sample.image.shape[:2]
    return w, h


def decode_png(png_base64: str) -> np.ndarray:
    """(H, W, 3) uint8 from a response image."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB"))


def _ap(gts: list[GtImage], preds: list[dict], categories: Sequence[str], iou_type: str) -> dict[str, float] | None:
    gt = build_coco_gt(gts, categories)
    if not gt["annotations"]:
        return None
    return coco_ap(gt, preds, iou_type)  # type: ignore[arg-type]


# ---- metrics -------------------------------------------------------------------------------------
def score_routed(scored: Sequence[Scored], route: str, iou_type: str,
                 agnostic: bool = False) -> dict[str, float] | None:
    """COCO AP of one route's detections (boxes, masks or keypoints) against the targets of that route.

    A detection belongs to the category its phrase names (the phrase the model wrote before the routing
    token); `agnostic=True` pools every phrase into one category (localisation only, a diagnostic).
    """
    cats = [AGNOSTIC] if agnostic else sorted({t.phrase for s in scored for t in s.sample.targets if t.route == route})
    gts, preds = [], []
    for i, s in enumerate(scored):
        targets = [t for t in s.sample.targets if t.route == route]
        w, h = _image_size(s.sample)
        gts.append(GtImage(
            width=w, height=h, image_id=i + 1,
            boxes=np.concatenate([t.boxes for t in targets]).reshape(-1, 4),
            labels=[AGNOSTIC if agnostic else t.phrase for t in targets for _ in range(len(t.boxes))],
            masks=np.concatenate([t.masks for t in targets]) if iou_type == "segm" else None,
            keypoints=np.concatenate([t.keypoints for t in targets]) if iou_type == "keypoints" else None,
        ))  # fmt: skip
        preds += _route_predictions(s.response, route, iou_type, cats, i + 1, agnostic)
    return _ap(gts, preds, cats, iou_type)


def _route_predictions(resp: Response, route: str, iou_type: str, cats: Sequence[str], image_id: int,
                       agnostic: bool = False) -> list[dict]:
    """Response items of `route` whose phrase names an evaluated category, as COCO results."""
    items = resp.keypoints if iou_type == "keypoints" else resp.detections
    items = [d for d in items if d.route == route and (agnostic or d.label in cats)]
    if iou_type == "segm":
        items = [d for d in items if d.mask is not None]
    if not items:
        return []
    return coco_results(
        image_id,
        np.asarray([d.box for d in items], float),
        [d.score for d in items],
        [AGNOSTIC if agnostic else d.label for d in items],
        masks=np.stack([rle_to_mask(d.mask) for d in items]) if iou_type == "segm" else None,
        keypoints=np.asarray([d.keypoints for d in items], float) if iou_type == "keypoints" else None,
        categories=cats,
    )


def score_native(scored: Sequence[Scored], location_bins: int) -> dict[str, float] | None:
    """Box AP of location-token answers; class slots bind to the categories the sample asked for."""
    cats = sorted({c for s in scored for c in s.sample.classes})
    gts, preds = [], []
    for i, s in enumerate(scored):
        objs = [(c, o) for c in s.sample.classes for o in objects_of_category(s.sample, c)]
        w, h = _image_size(s.sample)
        boxes = np.asarray([o.box for _, o in objs], np.float32).reshape(-1, 4)
        gts.append(GtImage(width=w, height=h, image_id=i + 1, boxes=boxes, labels=[c for c, _ in objs]))
        found = parse_native(s.response.raw_text, (w, h), dict(enumerate(s.sample.classes)), location_bins)
        kept = [(lab, b) for lab, b in found.detections if lab in cats]
        if kept:
            preds += coco_results(i + 1, np.asarray([b for _, b in kept], float), [1.0] * len(kept),
                                  [lab for lab, _ in kept], categories=cats)
    return _ap(gts, preds, cats, "bbox")


def requested_points(sample: TaskSample) -> int | None:
    """The polygon point count a sample's instruction asks for, read as the pipeline reads it."""
    return localize_request(sample.instruction).points


def score_polygons(scored: Sequence[Scored]) -> dict[str, float] | None:
    """Mask AP of the response's native polygons (their rasterised masks) against the instance masks of the
    categories each sample asked for; class slots bind to those categories."""
    cats = sorted({c for s in scored for c in s.sample.classes})
    gts, preds = [], []
    for i, s in enumerate(scored):
        objs = [(c, o) for c in s.sample.classes for o in objects_of_category(s.sample, c)]
        w, h = _image_size(s.sample)
        gts.append(GtImage(width=w, height=h, image_id=i + 1,
                           boxes=np.asarray([o.box for _, o in objs], np.float32).reshape(-1, 4),
                           labels=[c for c, _ in objs], masks=np.asarray([o.mask for _, o in objs], bool).reshape(-1, h, w)))
        kept = [p for p in s.response.polygons if p.label in cats and p.mask is not None]
        if kept:
            masks = np.stack([rle_to_mask(p.mask) for p in kept])
            boxes = np.asarray([[*np.min(p.points, 0), *np.max(p.points, 0)] for p in kept], float)
            preds += coco_results(i + 1, boxes, [1.0] * len(kept), [p.label for p in kept], masks=masks, categories=cats)
    return _ap(gts, preds, cats, "segm")


_POLYGON_GROUP_RE = re.compile(r"<cls_\d+>((?:\s*<loc_\d+>)+)")


def score_polygon_counts(scored: Sequence[Scored]) -> float | None:
    """Fraction of the polygons written in the raw answers (a class slot followed by location tokens) whose
    point count is exactly the requested one; None when no answer held a polygon."""
    ok = total = 0
    for s in scored:
        want = requested_points(s.sample)
        for m in _POLYGON_GROUP_RE.finditer(s.response.raw_text):
            total += 1
            ok += m.group(1).count("<loc_") == 2 * want
    return ok / total if total else None


def score_grounding(scored: Sequence[Scored]) -> float | None:
    """Acc@0.5 of the best-scoring [GRD] box per sample."""
    if not scored:
        return None
    preds, gts = [], []
    for s in scored:
        grd = [d for d in s.response.detections if d.route == "GRD"]
        preds.append(max(grd, key=lambda d: d.score).box if grd else None)
        gts.append(s.sample.targets[0].boxes[0].tolist())
    return grounding_acc50(preds, gts)


def score_text(scored: Sequence[Scored], metric: Callable[[list[str], list[Any]], float],
               reference: Callable[[TaskSample], Any]) -> float | None:
    if not scored:
        return None
    return metric([s.response.text for s in scored], [reference(s.sample) for s in scored])


# [GEN] and [EDIT] images are drawn at the decoder's size (32 px for `shapes`) and read at the scene's (128 px),
# where one drawn pixel covers 16. The oracle's own floor (9 px at 128 px) is made for renders at that size:
# there, one stray pixel of a generated image, or the blended edge of a shape, is an extra object, and the
# image fails. Components under this share of the image (3 pixels of a 32-px image, 49 px at 128) are noise
# here: the smallest object a [GEN] or [EDIT] val target holds covers 2.5% of it (411 px at 128 px, 300 + 300
# targets). Exact targets taken to 32 px and back: 0.82 / 0.80 of [GEN] / [EDIT] read right with the oracle's
# floor, 0.97 / 0.99 with this one (`python bench/oracle_generated.py --n 300`).
GENERATED_MIN_AREA = 0.003


def read_generated(image: np.ndarray) -> list:
    """The oracle's objects in a [GEN] / [EDIT] image at scene size, components under GENERATED_MIN_AREA left out."""
    h, w = image.shape[:2]
    return read_objects(image, min_area=max(6, round(GENERATED_MIN_AREA * h * w)))


def at_scene_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A generated image resized (bicubic) to the (H, W) of the ShapesWorld scene it depicts: the oracle reads
    shapes by template fitting, better at 128 px than at 32. [EDIT] results already come back at the source
    size (the editor resizes them), so [GEN] gets the same treatment."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def _score_first_image(
    scored: Sequence[Scored], route: str, score: Callable[[np.ndarray, Scored], float]
) -> float | None:
    """Mean of `score(image, item)` over the first `route` image of each item; an item without one scores 0."""
    if not scored:
        return None
    hits = 0.0
    for s in scored:
        images = [im for im in s.response.images if im.route == route]
        if images:
            hits += score(decode_png(images[0].png_base64), s)
    return hits / len(scored)


def score_generation(scored: Sequence[Scored]) -> float | None:
    """Oracle reads each [GEN] image; it must hold exactly the described objects. No image scores 0."""

    def score(image: np.ndarray, s: Scored) -> float:
        target = s.sample.targets[0]
        return generation_accuracy([at_scene_size(image, target.image.shape[:2])], [target.objects], read_generated)

    return _score_first_image(scored, "GEN", score)


def score_generation_f1(scored: Sequence[Scored], key: str) -> float | None:
    """`evaluation.metrics.object_f1` of the [GEN] images (at scene size) against the requested objects; an item
    without an image counts as an empty image."""
    if not scored:
        return None
    images, wanted = [], []
    for s in scored:
        target = s.sample.targets[0]
        found = [im for im in s.response.images if im.route == "GEN"]
        images.append(at_scene_size(decode_png(found[0].png_base64), target.image.shape[:2]) if found else None)
        wanted.append(target.objects)
    return object_f1(images, wanted, lambda im: [] if im is None else read_generated(im), key=key)


def edit_expectation(sample: TaskSample) -> list[dict[str, Any]]:
    """Objects the edited image must hold; an added object may be anywhere (box None)."""
    target = sample.targets[0]
    source = sample.scene.objects
    added = len(target.objects) > len(source)
    want = []
    for obj, box in zip(target.objects, target.boxes, strict=True):
        kept = any(o.kind == obj["kind"] and o.color == obj["color"] and iou_xyxy([o.box], [box])[0, 0] > 0.9
                   for o in source)
        want.append({**obj, "box": None if added and not kept else box.tolist()})
    return want


def score_editing(scored: Sequence[Scored]) -> float | None:
    """Oracle reads each [EDIT] image: same objects as the target, untouched ones in place. No image scores 0."""
    return _score_first_image(
        scored, "EDIT", lambda image, s: editing_accuracy([image], [edit_expectation(s.sample)], read_generated)
    )


def score_routing(scored: Sequence[Scored]) -> float:
    """Per sample, the set of routes emitted must equal the set the reference answer uses (all families)."""
    return routing_accuracy([s.response.routes for s in scored],
                            [route_names_in(s.sample.answer) for s in scored], as_set=True)


def routed_phrases(text: str) -> list[str]:
    """The phrase before each routing token of an answer, as the pipeline reads it."""
    return [phrase_before(text[: m.start()]) for m in _ROUTE_RE.finditer(text)]


def score_phrases(scored: Sequence[Scored]) -> float | None:
    """Fraction of routed perception samples whose routed phrases equal the reference ones, in order.

    A diagnostic: detections are labelled by these phrases, so a wrong phrase costs AP even when
    the decoder localised the right object.
    """
    routed = [s for s in scored if s.family in PHRASE_FAMILIES]
    if not routed:
        return None
    return sum(routed_phrases(s.response.raw_text) == [t.phrase for t in s.sample.targets] for s in routed) / len(routed)


def score_all(scored: Sequence[Scored], location_bins: int) -> dict[str, float | None]:
    fam = {f: [s for s in scored if s.family == f] for f in FAMILIES}
    det = score_routed(fam["detection"], "DET", "bbox") if fam["detection"] else None
    det_any = score_routed(fam["detection"], "DET", "bbox", agnostic=True) if fam["detection"] else None
    seg = score_routed(fam["segmentation"], "SEG", "segm") if fam["segmentation"] else None
    pose = score_routed(fam["keypoints"], "POSE", "keypoints") if fam["keypoints"] else None
    native = score_native(fam["native_detection"], location_bins) if fam["native_detection"] else None
    poly = score_polygons(fam["polygon"]) if fam["polygon"] else None
    return {
        "det_ap": det and det["ap"],
        "det_ap50": det and det["ap50"],
        "native_det_ap": native and native["ap"],
        "seg_ap": seg and seg["ap"],
        "grd_acc50": score_grounding(fam["grounding"]),
        "pose_ap": pose and pose["ap"],
        "vqa_acc": score_text(fam["vqa"], vqa_accuracy, lambda s: s.answer),
        "caption_f1": score_text(fam["caption"], caption_f1, lambda s: s.scene),
        "gen_acc": score_generation(fam["generation"]),
        "edit_acc": score_editing(fam["editing"]),
        "routing_acc": score_routing(scored),
        "region_acc": score_text(fam["region"], vqa_accuracy, lambda s: s.answer),
        "det_ap_agnostic": det_any and det_any["ap"],
        "phrase_acc": score_phrases(scored),
        "poly_ap": poly and poly["ap"],
        "poly_count_ok": score_polygon_counts(fam["polygon"]),
        "gen_object_f1": score_generation_f1(fam["generation"], "object"),
        "gen_color_f1": score_generation_f1(fam["generation"], "color"),
    }


def route_metrics(pipe: Any, scored: Sequence[Scored]) -> dict[str, float]:
    """The metrics of each deployed route's own evaluation hook (router.routes: RouteSpec.evaluate), e.g. a
    route declared outside the package scoring its own parts."""
    out: dict[str, float] = {}
    for route in pipe.deployed_routes:
        hook = pipe.system.binding(route).evaluate
        if hook is not None:
            out.update(hook(scored))
    return out


# ---- entry points --------------------------------------------------------------------------------
def evaluate_pipeline(pipe: Any, split: str = "val", n: int = 50, seed: int = 0, batch_size: int = 16,
                      teacher_force: bool = False, families: Sequence[str] = FAMILIES,
                      wording: str = "template") -> dict[str, Any]:
    """Every metric of an already-built Pipeline on `n` fixed ShapesWorld scenes (see module docstring).

    `wording` "template" gives the plain keys, "heldout" the `*_heldout_wording` ones, "both" all of them
    (the held-out set is the same scenes again, so it doubles the time).
    """
    if wording not in EVAL_WORDINGS:
        raise ValueError(f"unknown evaluation wording {wording!r}; accepted: {', '.join(EVAL_WORDINGS)}")
    t0 = time.perf_counter()
    cfg = pipe.config
    bins = cfg.model.vocab.location_bins
    result: dict[str, Any] = {}
    if wording in ("template", "both"):
        pairs = eval_samples(split, n, seed, cfg.training.image_size, bins, families)
        scored = run_samples(pipe, pairs, batch_size, teacher_force)
        result.update({k: _round(v) for k, v in score_all(scored, bins).items()})
        result.update({k: _round(v) for k, v in route_metrics(pipe, scored).items()})
        result["n"] = len(pairs)
    if wording in ("heldout", "both"):
        pairs = eval_samples(split, n, seed, cfg.training.image_size, bins, families, wording="heldout")
        scored = run_samples(pipe, pairs, batch_size, teacher_force)
        result.update({k + HELDOUT: _round(v) for k, v in score_all(scored, bins).items()})
        result.update({k + HELDOUT: _round(v) for k, v in route_metrics(pipe, scored).items()})
        result["routing_by_heldout_axis"] = routing_by_axis(scored)
        result["n" + HELDOUT] = len(pairs)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def routing_by_axis(scored: Sequence[Scored]) -> dict[str, float]:
    """Routing accuracy of the held-out samples that used each kind of held-out choice ("casing", "pre", ...)."""
    axes: dict[str, list[Scored]] = {}
    for s in scored:
        for axis in dict.fromkeys(h.split("=")[0] for h in s.sample.heldout_wording):  # ordered, no repeats
            axes.setdefault(axis, []).append(s)
    return {a: _round(score_routing(axes[a])) for a in sorted(axes)}


def evaluate_model(model: str = "shapes", split: str = "val", n: int = 50, seed: int = 0,
                   batch_size: int = 16, wording: str = "both",
                   families: Sequence[str] = FAMILIES, teacher_force: bool = False) -> dict[str, Any]:
    """Load `model` (preset name or saved folder) with Pipeline.from_pretrained and score it.

    `n` is the total number of scenes over the task `families` (scored once per wording set, see
    `evaluate_pipeline`); scene k of a family is the same whichever families are asked for, so a subset
    at a larger n extends the full suite's scenes of those families. The result also carries `model`,
    `wording`, `families` (when a subset), `teacher_force` (when set) and `load_s`. With `teacher_force` the
    model writes each sample's reference answer (`forced_answer_hook`), so decoder metrics are free of the
    LLM's phrase and routing errors while the link states are still the LLM's own.
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown task families {unknown or 'none given'}; accepted: {', '.join(FAMILIES)}")
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(model)
    load_s = time.perf_counter() - t0
    result = evaluate_pipeline(pipe, split=split, n=n, seed=seed, batch_size=batch_size, wording=wording,
                               families=tuple(families), teacher_force=teacher_force)
    subset = {"families": list(families)} if tuple(families) != FAMILIES else {}
    forced = {"teacher_force": True} if teacher_force else {}
    return {**result, "model": str(model), "split": split, "wording": wording, **subset, **forced,
            "load_s": round(load_s, 1)}


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)
