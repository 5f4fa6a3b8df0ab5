"""Assemble a Response from the generation and the decoder results of one request.

Response.text replaces each routing marker by a readable reference to its result
("red circles [DET]" -> "red circles (3 detections)"); raw_text keeps the markers.
Every item carries the route and phrase it answers. Native localisation (location
tokens in the text) becomes Detection / Polygon / Point items with route=None.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mllm.localize import parse_native
from router.config import SuperLinkConfig
from router.schemas import ITEM_KINDS, LEGACY_LISTS, RLE, Detection, Item, PartError, Point, Polygon, Response
from router.stages import DecoderResult, GenerationResult, Prepared

_ROUTE_TOKEN = re.compile(r"\[([A-Z]+)\]")
_CLASS = re.compile(r"<cls_(\d+)>")
_SPECIAL = re.compile(r"<(?:loc|cls)_\d+>|<pad>|</s>|<s>")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool/0-1 mask -> {"size": [h, w], "counts": str} (compressed COCO RLE, column-major)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects one (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def mask_rle(mask: np.ndarray) -> RLE:
    """(H, W) bool mask -> COCO compressed RLE."""
    rle = mask_to_rle(mask)
    return RLE(size=(rle["size"][0], rle["size"][1]), counts=rle["counts"])


def png_base64(image: np.ndarray | Image.Image) -> str:
    """(H, W, 3) uint8 array or PIL image -> PNG bytes in base64."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def readable_text(
    raw: str, generation: GenerationResult, results: Sequence[DecoderResult], classes: Sequence[str] = ()
) -> str:
    """Replace the k-th routing marker by the summary of the k-th link event's result, class slots by
    their bound names, and drop location tokens (their geometry is in the items)."""
    by_event = {r.event: r for r in results}
    links = generation.links
    k = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal k
        if k >= len(links) or links[k].route != m.group(1):
            return m.group(0)  # a marker with no link event (e.g. cut off): leave it readable as is
        res = by_event.get(k)
        k += 1
        if res is None:
            return "(not run)"
        return f"({res.error.kind.replace('_', ' ')})" if res.error else f"({res.summary})"

    text = _ROUTE_TOKEN.sub(sub, raw)
    text = _CLASS.sub(lambda m: classes[int(m.group(1))] if int(m.group(1)) < len(classes) else "", text)
    text = _SPECIAL.sub("", text)
    return re.sub(r"[ \t]{2,}", " ", text).replace(" ,", ",").replace(" .", ".").strip()


def sort_items(items: Sequence[Item]) -> dict[str, list[Item]]:
    """Every item into `parts`, and the items of the built-in kinds also into their Response list
    (detections, polygons, points, keypoints, images) for the clients that read those."""
    out: dict[str, list[Item]] = {key: [] for key in LEGACY_LISTS.values()}
    for it in items:
        key = LEGACY_LISTS.get(type(it))
        if key is not None:
            out[key].append(it)
    out["parts"] = list(items)
    return out


def checked_result(result: DecoderResult) -> DecoderResult:
    """`result`, or a bad_output part error in its place when one of its items is not a response Item
    (a route module returning the wrong thing fails its own part, never the response)."""
    bad = [type(it).__name__ for it in result.items if not isinstance(it, Item) or type(it) is Item]
    if not bad:
        return result
    known = ", ".join(sorted(ITEM_KINDS))
    err = PartError(route=result.route, phrase=result.phrase, kind="bad_output",
                    message=f"route {result.route} returned {bad[0]}, not a response item (Item subclass with a kind; "
                    f"known kinds: {known})")  # fmt: skip
    return replace(result, items=[], error=err)


def native_items(prepared: Prepared, text: str, config: SuperLinkConfig) -> tuple[list[Item], list[PartError]]:
    """Location tokens in the answer -> Detection/Polygon/Point items (route None) on the first image.

    Class slots bind to the categories the instruction lists (mllm.localize.parse_class_list);
    malformed groups become PartError(kind="bad_output") and never fail the response.
    """
    if not prepared.images or "<loc_" not in text:
        return [], []
    binding = dict(enumerate(prepared.classes)) if prepared.classes else None
    size = prepared.image_sizes[0]
    mode = "polygon" if prepared.localize == "polygon" else "auto"
    found = parse_native(text, size, binding, config.model.vocab.location_bins, mode=mode)
    items: list[Item] = [Detection(label=lab, phrase=lab, box=tuple(b), score=1.0) for lab, b in found.detections]
    items += [Detection(label=ph, phrase=ph, box=tuple(b), score=1.0) for ph, b in found.boxes]
    items += [Polygon(label=lab, phrase=lab, points=[tuple(p) for p in pts], mask=polygon_rle(pts, size))
              for lab, pts in found.polygons]  # fmt: skip
    items += [Point(label=ph, phrase=ph, point=tuple(pt)) for ph, pt in found.points]
    errors = [PartError(kind="bad_output", message=f"native localisation: {e}") for e in found.errors]
    want = prepared.polygon_points
    errors += [
        PartError(kind="bad_output", phrase=lab, message=f"polygon for {lab!r} has {len(pts)} points; {want} were asked for")
        for lab, pts in found.polygons if want is not None and len(pts) != want
    ]  # fmt: skip
    return items, errors


def polygon_rle(points: Sequence[tuple[float, float]], size: tuple[int, int]) -> RLE:
    """A polygon in pixels -> its mask on a (width, height) image as COCO RLE (pycocotools' own rasteriser,
    the one COCO uses for polygon annotations)."""
    w, h = size
    flat = [float(v) for p in points for v in p]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], h, w))
    counts = rle["counts"]
    return RLE(size=(h, w), counts=counts.decode("ascii") if isinstance(counts, bytes) else counts)


def assemble_response(
    prepared: Prepared,
    generation: GenerationResult,
    results: Sequence[DecoderResult],
    timings: Mapping[str, float],
    config: SuperLinkConfig,
) -> Response:
    results = sorted((checked_result(r) for r in results), key=lambda r: r.event)
    items: list[Item] = [it for r in results for it in r.items]
    errors = [r.error for r in results if r.error is not None]
    native, native_errors = native_items(prepared, generation.text, config)
    return Response(
        text=readable_text(generation.text, generation, results, prepared.classes),
        raw_text=generation.text.strip(),
        routes=[link.route for link in generation.links],
        errors=errors + native_errors,
        timings_ms=dict(timings),
        **sort_items(native + items),
    )
