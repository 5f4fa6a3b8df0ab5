"""COCO-style AP for boxes, masks and keypoints through pycocotools, plus the glue to get there.

All AP numbers come from `pycocotools.cocoeval.COCOeval` (never a hand-written mAP). This module
only builds the inputs pycocotools expects (a ground-truth dict and a list of results) and reads
its summary back:

    gt = build_coco_gt([GtImage(width=128, height=128, boxes=..., labels=["circle"], masks=...)])
    preds = coco_results(image_id=1, boxes=..., scores=..., labels=..., masks=...)
    coco_ap(gt, preds, "segm")  # {"ap": ..., "ap50": ..., "ap75": ...}

Boxes in SuperLink are (x1, y1, x2, y2) pixels; COCO stores (x, y, w, h). Masks travel as
compressed COCO RLE with `counts` as a str, the same shape as `router.schemas.RLE`.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from router.response import mask_to_rle  # noqa: F401  (re-exported: evaluation reads and writes COCO RLE)
from shapesworld.constants import KEYPOINT_NAMES, KEYPOINT_SIGMAS, KINDS

IouType = Literal["bbox", "segm", "keypoints"]
IOU_TYPES: tuple[str, ...] = ("bbox", "segm", "keypoints")
# The field a COCO result must carry for each evaluation type.
_RESULT_FIELD: dict[str, str] = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


# ---- RLE ----------------------------------------------------------------------------------


def rle_to_mask(rle: Mapping[str, Any] | Any) -> np.ndarray:
    """Compressed COCO RLE (a dict, or an object with `size` and `counts` such as router.schemas.RLE)
    -> (H, W) bool mask."""
    size = rle["size"] if isinstance(rle, Mapping) else getattr(rle, "size", None)
    counts = rle["counts"] if isinstance(rle, Mapping) else getattr(rle, "counts", None)
    if size is None or len(size) != 2 or not isinstance(counts, str | bytes):
        raise ValueError(f"not a compressed RLE: expected size [h, w] and counts str/bytes, got {rle!r:.200}")
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    return mask_utils.decode({"size": [int(size[0]), int(size[1])], "counts": raw}).astype(bool)


# ---- ground truth -------------------------------------------------------------------------


@dataclass
class GtImage:
    """Ground truth of one image, in SuperLink's in-memory conventions."""

    width: int
    height: int
    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2 pixels
    labels: Sequence[str | int]  # category names (from `categories`) or COCO category ids
    masks: np.ndarray | None = None  # (N, H, W) bool
    keypoints: np.ndarray | None = None  # (N, K, 3) x, y, visibility (0 absent, 1 occluded, 2 visible)
    image_id: int | None = None  # default: position in the list + 1
    file_name: str = ""


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def category_id(label: str | int, categories: Sequence[str]) -> int:
    """A kind name or a COCO id (1-based index into `categories`) -> the COCO category id."""
    if isinstance(label, str):
        if label not in categories:
            raise ValueError(f"unknown category {label!r}; accepted: {', '.join(categories)}")
        return categories.index(label) + 1
    if not 1 <= int(label) <= len(categories):
        raise ValueError(f"category id {label} out of range; accepted 1..{len(categories)}")
    return int(label)


def coco_categories(categories: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    return [
        {
            "id": i + 1,
            "name": name,
            "supercategory": "shape",
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [],
        }
        for i, name in enumerate(categories)
    ]


def _check_gt_image(img: GtImage) -> int:
    n = len(img.boxes)
    if np.asarray(img.boxes).reshape(-1, 4).shape[0] != n or len(img.labels) != n:
        raise ValueError(
            f"GtImage needs boxes (N, 4) and N labels; got {len(img.boxes)} boxes, {len(img.labels)} labels"
        )
    if img.masks is not None and np.asarray(img.masks).shape != (n, img.height, img.width):
        raise ValueError(
            f"GtImage masks must be (N, H, W) = {(n, img.height, img.width)}, got {np.asarray(img.masks).shape}"
        )
    if img.keypoints is not None:
        kp = np.asarray(img.keypoints)
        if kp.ndim != 3 or kp.shape[0] != n or kp.shape[2] != 3:
            raise ValueError(f"GtImage keypoints must be (N, K, 3) with N={n}, got {kp.shape}")
    return n


def _gt_annotation(
    img: GtImage, image_id: int, k: int, ann_id: int, categories: Sequence[str]
) -> dict[str, Any]:
    box = xyxy_to_xywh(np.asarray(img.boxes, dtype=float)[k])
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id(img.labels[k], categories),
        "bbox": box,
        "area": box[2] * box[3],
        "iscrowd": 0,
    }
    if img.masks is not None:
        mask = np.asarray(img.masks[k]).astype(bool)
        ann["segmentation"] = mask_to_rle(mask)
        ann["area"] = float(mask.sum())  # COCO area is the mask area when a mask exists
    if img.keypoints is not None:
        kp = np.asarray(img.keypoints[k], dtype=float)  # (K, 3)
        ann["keypoints"] = kp.reshape(-1).tolist()
        ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
    return ann


def build_coco_gt(images: Sequence[GtImage], categories: Sequence[str] = KINDS) -> dict[str, Any]:
    """In-memory ground truth -> a COCO instances dict (images, annotations, categories)."""
    out: dict[str, Any] = {"images": [], "annotations": [], "categories": coco_categories(categories)}
    for i, img in enumerate(images):
        n = _check_gt_image(img)
        image_id = img.image_id if img.image_id is not None else i + 1
        out["images"].append(
            {"id": image_id, "width": img.width, "height": img.height, "file_name": img.file_name}
        )
        for k in range(n):
            out["annotations"].append(
                _gt_annotation(img, image_id, k, len(out["annotations"]) + 1, categories)
            )
    return out


# ---- predictions --------------------------------------------------------------------------


def coco_results(
    image_id: int,
    boxes: np.ndarray,
    scores: Sequence[float],
    labels: Sequence[str | int],
    masks: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    categories: Sequence[str] = KINDS,
) -> list[dict[str, Any]]:
    """Predictions of one image -> COCO result dicts (bbox always; segmentation / keypoints when given).

    boxes (N, 4) x1, y1, x2, y2 pixels; masks (N, H, W) bool; keypoints (N, K, 3) x, y, score.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    n = len(boxes)
    if len(scores) != n or len(labels) != n:
        raise ValueError(
            f"coco_results needs one score and label per box; got {n} boxes, {len(scores)} scores, {len(labels)} labels"
        )
    if masks is not None and len(masks) != n or keypoints is not None and len(keypoints) != n:
        raise ValueError(f"coco_results needs one mask / keypoint set per box ({n} boxes)")
    results = []
    for k in range(n):
        r: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": category_id(labels[k], categories),
            "score": float(scores[k]),
            "bbox": xyxy_to_xywh(boxes[k]),
        }
        if masks is not None:
            r["segmentation"] = mask_to_rle(np.asarray(masks[k]).astype(bool))
        if keypoints is not None:
            r["keypoints"] = np.asarray(keypoints[k], dtype=float).reshape(-1).tolist()
        results.append(r)
    return results


def _quiet_coco(gt: Mapping[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def gt_as_predictions(gt: Mapping[str, Any], iou_type: IouType) -> list[dict[str, Any]]:
    """Every (non-crowd) ground-truth annotation as a COCO result with score 1.0: scoring these must
    give AP 1.0, which checks an exported annotation file end to end."""
    _check_iou_type(iou_type)
    coco = _quiet_coco(gt)
    results = []
    for ann in coco.dataset.get("annotations", []):
        if ann.get("iscrowd", 0) or (iou_type == "keypoints" and ann.get("num_keypoints", 0) == 0):
            continue  # COCOeval ignores these ground truths, so a prediction for them is noise
        r = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0}
        if iou_type == "bbox":
            r["bbox"] = list(ann["bbox"])
        elif iou_type == "segm":
            rle = coco.annToRLE(ann)  # polygons, raw or compressed RLE -> compressed RLE
            counts = rle["counts"]
            r["segmentation"] = {
                "size": list(rle["size"]),
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
            }
        else:
            r["keypoints"] = list(ann["keypoints"])
        results.append(r)
    return results


# ---- AP -----------------------------------------------------------------------------------


def _check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"unknown iou_type {iou_type!r}; accepted: {', '.join(IOU_TYPES)}")


def _strip_results(
    predictions: Sequence[Mapping[str, Any]], iou_type: str, image_ids: set[int]
) -> list[dict[str, Any]]:
    """Keep only the field this evaluation scores: pycocotools picks its loading branch from the
    first result's keys (a bbox would win over a mask), and it mutates what it is given."""
    field = _RESULT_FIELD[iou_type]
    out = []
    for i, p in enumerate(predictions):
        missing = [k for k in ("image_id", "category_id", "score", field) if k not in p]
        if missing:
            raise ValueError(f"prediction {i} lacks {missing} needed for iou_type={iou_type!r}")
        if p["image_id"] not in image_ids:
            raise ValueError(f"prediction {i} has image_id {p['image_id']} not in the ground truth")
        out.append(
            {
                "image_id": p["image_id"],
                "category_id": p["category_id"],
                "score": float(p["score"]),
                field: copy.deepcopy(p[field]),
            }
        )
    return out


def _keypoint_sigmas(gt: Mapping[str, Any], kpt_sigmas: Sequence[float] | None) -> np.ndarray:
    sigmas = np.asarray(KEYPOINT_SIGMAS if kpt_sigmas is None else kpt_sigmas, dtype=float)
    for ann in gt["annotations"]:
        if "keypoints" not in ann:
            raise ValueError(
                f"ground-truth annotation {ann.get('id')} has no keypoints; keypoint AP needs them"
            )
        if len(ann["keypoints"]) != 3 * len(sigmas):
            raise ValueError(
                f"annotation {ann.get('id')} has {len(ann['keypoints']) // 3} keypoints but {len(sigmas)} sigmas were given"
            )
    return sigmas


def coco_ap(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    iou_type: IouType,
    kpt_sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """COCO AP@[.5:.95], AP50 and AP75 of `predictions` (COCO results) against `gt` (COCO instances dict).

    Values are rounded to 6 decimals. No predictions scores 0.0. Keypoint OKS uses `kpt_sigmas` (default ShapesWorld's KEYPOINT_SIGMAS).
    Raises if the ground truth has nothing COCOeval can score (AP would be undefined).
    """
    _check_iou_type(iou_type)
    if not gt.get("annotations"):
        raise ValueError("ground truth has no annotations; AP is undefined")
    sigmas = _keypoint_sigmas(gt, kpt_sigmas) if iou_type == "keypoints" else None
    results = _strip_results(predictions, iou_type, {img["id"] for img in gt["images"]})
    if not results:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    coco_gt = _quiet_coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # Rounded: COCOeval divides by tp + fp + np.spacing(1), so a perfect single match reads 1 - 2e-16.
    ap, ap50, ap75 = (round(float(s), 6) for s in ev.stats[:3])
    if ap < 0:  # COCOeval's -1: every ground truth was ignored (crowd, or no visible keypoints)
        raise ValueError(f"ground truth has no scorable {iou_type} annotations; AP is undefined")
    return {"ap": ap, "ap50": ap50, "ap75": ap75}
