"""Hungarian matching and set losses for the link-conditioned detector (DINO recipe).

Classification is contrastive: a query's logit for phrase p is its dot product
with phrase p's link vector, so "classes" are the phrases of each request.
Costs and losses reuse transformers' detection loss utilities and scipy's
`linear_sum_assignment`; only the glue is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_for_object_detection import dice_loss, generalized_box_iou
from transformers.loss.loss_grounding_dino import sigmoid_focal_loss

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


@dataclass(frozen=True)
class LossWeights:
    """Matching costs and loss weights (VisionLLM v2 train.py: class 2, box 5, GIoU 2, mask 5, dice 5)."""

    class_: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    mask: float = 5.0
    dice: float = 5.0


@dataclass
class ImageTarget:
    """One image's targets in the decoder's normalised frame."""

    labels: torch.Tensor  # (n,) phrase index
    boxes: torch.Tensor  # (n, 4) normalised cxcywh
    masks: torch.Tensor | None = None  # (n, M, M) float in [0, 1] at mask_size, or None


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, P) logits, (n,) labels -> (N, n) focal cost of calling each query each target's phrase."""
    prob = logits[:, labels].sigmoid()  # (N, n)
    neg = (1 - FOCAL_ALPHA) * prob**FOCAL_GAMMA * -(1 - prob + 1e-8).log()
    pos = FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * -(prob + 1e-8).log()
    return pos - neg


def mask_costs(mask_logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M, M) logits, (n, M, M) targets -> pairwise (N, n) mean BCE and dice costs."""
    x = mask_logits.flatten(1)  # (N, MM)
    t = masks.flatten(1)  # (n, MM)
    pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    bce = (pos @ t.T + neg @ (1 - t).T) / x.shape[1]
    p = x.sigmoid()
    dice = 1 - (2 * p @ t.T + 1) / (p.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
    return bce, dice


@torch.no_grad()
def match(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    target: ImageTarget,
    mask_logits: torch.Tensor | None = None,
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: (N, P) logits, (N, 4) cxcywh boxes -> (query indices, target indices), both (min(N, n),)."""
    n = target.labels.numel()
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        return empty, empty
    cost = weights.class_ * focal_class_cost(logits.float(), target.labels)
    cost = cost + weights.bbox * torch.cdist(boxes.float(), target.boxes, p=1)
    giou = generalized_box_iou(
        center_to_corners_format(boxes.float()), center_to_corners_format(target.boxes)
    )
    cost = cost - weights.giou * giou
    if mask_logits is not None and target.masks is not None:
        bce, dice = mask_costs(mask_logits.float(), target.masks)
        cost = cost + weights.mask * bce + weights.dice * dice
    cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    dev = logits.device
    return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(
        cols, dtype=torch.long, device=dev
    )


def class_loss(
    logits: torch.Tensor, phrase_mask: torch.Tensor, targets: list[ImageTarget], indices, num_boxes: float
) -> torch.Tensor:
    """Sigmoid focal loss over every (query, real phrase) pair; matched pairs are positives. logits (B, N, P)."""
    onehot = torch.zeros_like(logits)
    for b, (q, t) in enumerate(indices):
        onehot[b, q, targets[b].labels[t]] = 1.0
    valid = phrase_mask[:, None, :].expand_as(logits)  # (B, N, P); padded phrases carry -inf logits
    return sigmoid_focal_loss(logits[valid], onehot[valid], num_boxes, FOCAL_ALPHA, FOCAL_GAMMA)


def box_losses(
    boxes: torch.Tensor, targets: list[ImageTarget], indices, num_boxes: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 on normalised cxcywh and 1 - GIoU over matched pairs. boxes (B, N, 4)."""
    src = torch.cat([boxes[b, q] for b, (q, _) in enumerate(indices)])  # (m, 4)
    tgt = torch.cat([targets[b].boxes[t] for b, (_, t) in enumerate(indices)])  # (m, 4)
    if src.numel() == 0:
        zero = boxes.sum() * 0.0
        return zero, zero
    l1 = F.l1_loss(src, tgt, reduction="sum") / num_boxes
    giou = torch.diag(generalized_box_iou(center_to_corners_format(src), center_to_corners_format(tgt)))
    return l1, (1 - giou).sum() / num_boxes


def mask_losses(
    mask_logits: torch.Tensor, targets: list[ImageTarget], indices, num_boxes: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE + dice at mask_size over matched pairs of images that carry masks. mask_logits (B, N, M, M)."""
    src, tgt = [], []
    for b, (q, t) in enumerate(indices):
        if targets[b].masks is not None and q.numel():
            src.append(mask_logits[b, q])
            tgt.append(targets[b].masks[t])
    if not src:
        zero = mask_logits.sum() * 0.0
        return zero, zero
    x, y = torch.cat(src).flatten(1), torch.cat(tgt).flatten(1)  # (m, MM)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(1).sum() / num_boxes
    return bce, dice_loss(x, y, num_boxes)


def num_boxes_of(targets: list[ImageTarget]) -> float:
    """Normaliser for the summed losses: total targets in the batch, at least 1."""
    return float(max(1, sum(t.labels.numel() for t in targets)))
