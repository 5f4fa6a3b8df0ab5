"""Metrics for SuperLink: COCO AP through pycocotools, and task accuracies (grounding, VQA, captions,
generation and editing through the ShapesWorld oracle, routing)."""

from evaluation.coco import (
    GtImage,
    build_coco_gt,
    coco_ap,
    coco_results,
    gt_as_predictions,
    mask_to_rle,
    rle_to_mask,
)
from evaluation.metrics import (
    caption_f1,
    editing_accuracy,
    generation_accuracy,
    grounding_acc50,
    iou_xyxy,
    normalize_answer,
    routing_accuracy,
    vqa_accuracy,
)

__all__ = [
    "GtImage",
    "build_coco_gt",
    "caption_f1",
    "coco_ap",
    "coco_results",
    "editing_accuracy",
    "generation_accuracy",
    "grounding_acc50",
    "gt_as_predictions",
    "iou_xyxy",
    "mask_to_rle",
    "normalize_answer",
    "routing_accuracy",
    "rle_to_mask",
    "vqa_accuracy",
]
