"""COCO AP through pycocotools: ground truth scores 1.0, perturbations score strictly lower."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import numpy as np
import pytest
from scipy import ndimage

from evaluation.coco import (
    GtImage,
    build_coco_gt,
    coco_ap,
    coco_results,
    gt_as_predictions,
    mask_to_rle,
    rle_to_mask,
)
from router.schemas import RLE
from shapesworld.constants import NUM_KEYPOINTS

H = W = 64


def _square(x1: int, y1: int, x2: int, y2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A filled rectangle: its mask (H, W), box (4,), and corner keypoints (NUM_KEYPOINTS, 3)."""
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    kps = np.zeros((NUM_KEYPOINTS, 3))
    kps[:4] = [[x1, y1, 2], [x2, y1, 2], [x2, y2, 2], [x1, y2, 2]]
    return mask, np.array([x1, y1, x2, y2], float), kps


def _image(image_id: int, rects: list[tuple[int, int, int, int]], labels: list[str]) -> GtImage:
    parts = [_square(*r) for r in rects]
    return GtImage(
        width=W,
        height=H,
        boxes=np.stack([p[1] for p in parts]),
        labels=labels,
        masks=np.stack([p[0] for p in parts]),
        keypoints=np.stack([p[2] for p in parts]),
        image_id=image_id,
    )


@pytest.fixture(scope="module")
def gt_images() -> list[GtImage]:
    return [
        _image(1, [(4, 4, 24, 24), (30, 30, 60, 50)], ["square", "circle"]),
        _image(2, [(10, 8, 40, 30), (2, 40, 22, 62)], ["square", "square"]),
    ]


@pytest.fixture(scope="module")
def gt(gt_images: list[GtImage]) -> dict:
    return build_coco_gt(gt_images)


def _preds(images: list[GtImage], shift: int = 0, erode: int = 0, move_kp: float = 0.0) -> list[dict]:
    out = []
    for img in images:
        masks = np.stack([ndimage.binary_erosion(m, iterations=erode) if erode else m for m in img.masks])
        kps = img.keypoints.copy()
        kps[:, :, :2] += move_kp
        out += coco_results(img.image_id, img.boxes + shift, [0.9] * len(img.boxes), img.labels, masks, kps)
    return out


def test_rle_round_trip_and_schema_compatible() -> None:
    mask, _, _ = _square(3, 5, 20, 9)
    rle = mask_to_rle(mask)
    assert rle["size"] == [H, W] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_to_mask(rle), mask)
    model = RLE.model_validate(rle)  # the response schema accepts it unchanged
    assert np.array_equal(rle_to_mask(model), mask)


def test_rle_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one \\(H, W\\) mask"):
        mask_to_rle(np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="not a compressed RLE"):
        rle_to_mask({"size": [4, 4], "counts": [1, 2, 3]})


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_ground_truth_scores_perfect(gt: dict, gt_images: list[GtImage], iou_type: str) -> None:
    assert coco_ap(gt, _preds(gt_images), iou_type) == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0}
    assert coco_ap(gt, gt_as_predictions(gt, iou_type), iou_type)["ap"] == 1.0


@pytest.mark.parametrize(
    ("iou_type", "perturb"),
    [("bbox", {"shift": 3}), ("segm", {"erode": 2}), ("keypoints", {"move_kp": 2.0})],
)
def test_perturbed_predictions_score_lower(
    gt: dict, gt_images: list[GtImage], iou_type: str, perturb: dict
) -> None:
    scores = coco_ap(gt, _preds(gt_images, **perturb), iou_type)
    assert 0.0 <= scores["ap"] < 1.0
    assert scores["ap50"] >= scores["ap75"]


def test_wrong_category_scores_zero(gt: dict, gt_images: list[GtImage]) -> None:
    preds = _preds(gt_images)
    for p in preds:
        p["category_id"] = 7  # "cross": in no ground truth
    assert coco_ap(gt, preds, "bbox")["ap"] == 0.0


def test_empty_predictions_score_zero_and_nothing_printed(gt: dict) -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert coco_ap(gt, [], "segm") == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
        coco_ap(gt, gt_as_predictions(gt, "bbox"), "bbox")
    assert buf.getvalue() == ""


def test_caller_predictions_not_mutated(gt: dict, gt_images: list[GtImage]) -> None:
    preds = _preds(gt_images)
    keys = [set(p) for p in preds]
    coco_ap(gt, preds, "segm")
    assert [set(p) for p in preds] == keys


def test_bad_inputs_fail_loudly(gt: dict, gt_images: list[GtImage]) -> None:
    with pytest.raises(ValueError, match="unknown iou_type"):
        coco_ap(gt, [], "mask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lacks"):
        coco_ap(gt, [{"image_id": 1, "category_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}], "segm")
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_ap(gt, [{"image_id": 99, "category_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}], "bbox")
    with pytest.raises(ValueError, match="sigmas"):
        coco_ap(gt, _preds(gt_images), "keypoints", kpt_sigmas=[0.05] * 3)
    with pytest.raises(ValueError, match="no annotations"):
        coco_ap({**gt, "annotations": []}, [], "bbox")
    with pytest.raises(ValueError, match="unknown category"):
        build_coco_gt([GtImage(W, H, np.array([[0, 0, 4, 4]]), ["blob"])])


def test_polygon_ground_truth_scores_perfect_as_predictions() -> None:
    """Exports may store masks as polygons; gt_as_predictions turns them into RLE results."""
    gt = build_coco_gt([GtImage(W, H, np.array([[10, 10, 30, 40]]), ["triangle"])])
    gt["annotations"][0]["segmentation"] = [[10, 40, 30, 40, 20, 10]]  # a triangle, x y pairs
    gt["annotations"][0]["area"] = 300.0
    preds = gt_as_predictions(gt, "segm")
    assert isinstance(preds[0]["segmentation"]["counts"], str)
    assert coco_ap(gt, preds, "segm")["ap"] == 1.0
