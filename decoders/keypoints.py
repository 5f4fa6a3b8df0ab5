"""[POSE]: a query-conditioned keypoint head on the link-conditioned detector's object queries.

The POSE link states play two parts, as in UniPose inside VisionLLM v2: their
mean over Q is the category vector the detector classifies against, and the Q
link queries themselves say which points are wanted: K learned keypoint-slot
embeddings cross-attend to them. Each slot feature is then added to each
object query and an MLP gives (x, y) relative to that query's box and a
visibility logit. The detector may be shared with the [DET] decoder in-process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.image_transforms import center_to_corners_format

from decoders.base import DecoderInputError, DecoderOutput
from decoders.config import DetectorConfig, KeypointConfig
from decoders.detection import (
    DetectionBatch,
    DetectionDecoder,
    DetectionTarget,
    LinkDinoOutput,
    detection_picks,
    normalise_targets,
    validate_batch,
    validate_targets,
)

KEYPOINT_CONFIG_FILE = "keypoints.json"
HEAD_WEIGHTS_FILE = "keypoint_head.safetensors"
DETECTOR_SUBDIR = "detector"
DEFAULT_SIGMA = 0.05  # ShapesWorld's sharp vertices (shapesworld.constants.KEYPOINT_SIGMAS)


@dataclass
class PoseBatch(DetectionBatch):
    """Same fields as DetectionBatch; `task` is not used for [POSE]."""


@dataclass
class PoseTarget(DetectionTarget):
    """boxes (n, 4) xyxy and keypoints (n, K, 3) x, y, v in ORIGINAL pixels; v 0 unused, 1 occluded, 2 visible."""

    keypoints: torch.Tensor | None = None


@dataclass
class PoseInstance:
    phrase_index: int
    phrase: str
    box: tuple[float, float, float, float]  # xyxy, original pixels
    score: float
    keypoints: np.ndarray  # (K, 3): x, y in original pixels, visibility score in [0, 1]


@dataclass(frozen=True)
class KeypointLossWeights:
    l1: float = 5.0
    oks: float = 2.0
    visibility: float = 1.0


class KeypointHead(nn.Module):
    """Keypoint slots conditioned on a phrase's link queries, read out per object query."""

    def __init__(self, d_model: int, config: KeypointConfig):
        super().__init__()
        if d_model % config.num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by keypoint num_heads {config.num_heads}")
        self.slot_embed = nn.Embedding(config.num_keypoints, d_model)
        self.slot_attn = nn.MultiheadAttention(d_model, config.num_heads, batch_first=True)
        self.slot_norm = nn.LayerNorm(d_model)
        self.query_norm = nn.LayerNorm(d_model)
        h = config.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(d_model, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 3)
        )

    def slots(self, phrase_states: torch.Tensor) -> torch.Tensor:
        """(B, P, Q, C) link queries -> (B, P, K, C) keypoint-slot features."""
        b, p, q, c = phrase_states.shape
        keys = phrase_states.reshape(b * p, q, c)
        slots = self.slot_embed.weight.unsqueeze(0).expand(b * p, -1, -1)  # (BP, K, C)
        attended, _ = self.slot_attn(slots, keys, keys, need_weights=False)
        return self.slot_norm(slots + attended).view(b, p, -1, c)

    def forward(
        self, hidden: torch.Tensor, slots: torch.Tensor, phrase_of_query: torch.Tensor
    ) -> torch.Tensor:
        """hidden (B, N, C), slots (B, P, K, C), phrase_of_query (B, N) -> (B, N, K, 3): rel x, rel y logits, vis logit."""
        b, n = phrase_of_query.shape
        picked = slots[torch.arange(b, device=slots.device)[:, None], phrase_of_query]  # (B, N, K, C)
        return self.mlp(self.query_norm(hidden.unsqueeze(2) + picked))


class KeypointDecoder(nn.Module):
    """[POSE] decoder: `decoder(batch, targets=None) -> DecoderOutput` with PoseInstance lists."""

    def __init__(self, config: KeypointConfig, detector: DetectionDecoder):
        super().__init__()
        self.config = config
        self.detector = detector  # pass the [DET] decoder to share weights in-process
        self.head = KeypointHead(detector.link_dim, config)
        sigmas = config.sigmas or [DEFAULT_SIGMA] * config.num_keypoints
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float32), persistent=False)
        self.weights = KeypointLossWeights()

    @classmethod
    def build(cls, config: KeypointConfig, detector_config: DetectorConfig) -> KeypointDecoder:
        """A keypoint decoder with its own detector: the Grounding DINO folder `detector_config.pretrained`
        when set (the same weights [DET] starts from), else random weights of the configured size."""
        if detector_config.pretrained:
            return cls(config, DetectionDecoder.from_pretrained(detector_config.pretrained, detector_config))
        return cls(config, DetectionDecoder(detector_config))

    @property
    def link_dim(self) -> int:
        return self.detector.link_dim

    def forward(self, batch: PoseBatch, targets: list[PoseTarget] | None = None) -> DecoderOutput:
        if targets is not None:
            validate_batch(batch, self.detector.config, self.link_dim)
            self._validate_targets(targets, batch)
        out = self.detector.run(batch, with_masks=False)
        slots = self.head.slots(batch.phrase_states.to(out.hidden.device, out.hidden.dtype))  # (B, P, K, C)
        phrase_of_query = out.logits[-1].argmax(-1)  # (B, N); padded phrases hold -inf
        if targets is None:
            kp = self.head(out.hidden, slots, phrase_of_query)
            return DecoderOutput(predictions=self.predict(out, kp, batch))
        norm = normalise_targets(targets, batch.image_sizes, self.detector.config.mask_size, out.boxes.device)
        det_loss, losses, indices = self.detector.set_loss(out, batch.phrase_mask, norm)
        for b, (q, t) in enumerate(indices):  # matched queries read the slots of their target's phrase
            phrase_of_query[b, q] = norm[b].labels[t]
        kp = self.head(out.hidden, slots, phrase_of_query)  # (B, N, K, 3)
        parts = self.keypoint_losses(kp, out, targets, indices, batch.image_sizes)
        w = self.weights
        loss = (
            det_loss
            + w.l1 * parts["loss_kpt_l1"]
            + w.oks * parts["loss_oks"]
            + w.visibility * parts["loss_vis"]
        )
        losses.update({k: v.detach() for k, v in parts.items()})
        with torch.no_grad():
            predictions = self.predict(out, self.head(out.hidden, slots, out.logits[-1].argmax(-1)), batch)
        return DecoderOutput(predictions=predictions, loss=loss, losses=losses)

    def _validate_targets(self, targets: list[PoseTarget], batch: PoseBatch) -> None:
        validate_targets(targets, batch)
        k = self.config.num_keypoints
        for i, t in enumerate(targets):
            kp = t.keypoints
            if kp is None or kp.dim() != 3 or tuple(kp.shape) != (t.boxes.shape[0], k, 3):
                got = None if kp is None else tuple(kp.shape)
                raise DecoderInputError(
                    f"targets[{i}].keypoints: expected ({t.boxes.shape[0]}, {k}, 3), got {got}"
                )
            if not torch.isfinite(kp).all() or not torch.isin(kp[..., 2], kp.new_tensor([0, 1, 2])).all():
                raise DecoderInputError(
                    f"targets[{i}].keypoints: must be finite with visibility v in {{0, 1, 2}}"
                )

    @staticmethod
    def absolute(kp: torch.Tensor, boxes_cxcywh: torch.Tensor) -> torch.Tensor:
        """Keypoints relative to their query's box -> normalised image coordinates. (..., K, 3), (..., 4) -> (..., K, 2)."""
        xyxy = center_to_corners_format(boxes_cxcywh)
        origin, size = xyxy[..., None, :2], (xyxy[..., 2:] - xyxy[..., :2])[..., None, :]
        return origin + kp[..., :2].sigmoid() * size

    def keypoint_losses(
        self, kp: torch.Tensor, out: LinkDinoOutput, targets: list[PoseTarget], indices, sizes
    ) -> dict[str, torch.Tensor]:
        """L1 normalised by box size and 1 - OKS over labelled points (v > 0); BCE of visibility (v == 2)."""
        pred, vis, gt, boxes, scale = [], [], [], [], []
        for b, (q, t) in enumerate(indices):
            w, h = sizes[b]
            px = torch.tensor([w, h], dtype=kp.dtype, device=kp.device)
            pred.append(self.absolute(kp[b, q], out.boxes[-1, b, q]) * px)  # (m, K, 2) pixels
            vis.append(kp[b, q, :, 2])
            gt.append(targets[b].keypoints.to(kp)[t])
            boxes.append(targets[b].boxes.to(kp)[t])
            scale.append(px.expand(len(t), 2))
        pred, vis, gt, boxes = torch.cat(pred), torch.cat(vis), torch.cat(gt), torch.cat(boxes)
        if pred.shape[0] == 0:
            zero = kp.sum() * 0.0
            return {"loss_kpt_l1": zero, "loss_oks": zero, "loss_vis": zero}
        labelled = (gt[..., 2] > 0).to(kp.dtype)  # (m, K)
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)  # (m, 2) pixels
        l1 = ((pred - gt[..., :2]).abs() / wh[:, None, :]).sum(-1)  # (m, K)
        d2 = ((pred - gt[..., :2]) ** 2).sum(-1)  # (m, K)
        area = (wh[:, 0] * wh[:, 1])[:, None]  # (m, 1)
        e = d2 / ((2 * self.sigmas) ** 2 * area * 2)  # COCO OKS exponent
        count = labelled.sum(-1)  # (m,)
        oks = (torch.exp(-e) * labelled).sum(-1) / count.clamp(min=1)
        has = (count > 0).to(kp.dtype)
        return {
            "loss_kpt_l1": (l1 * labelled).sum() / labelled.sum().clamp(min=1),
            "loss_oks": ((1 - oks) * has).sum() / has.sum().clamp(min=1),
            "loss_vis": F.binary_cross_entropy_with_logits(vis, (gt[..., 2] == 2).to(kp.dtype)),
        }

    @torch.no_grad()
    def predict(self, out: LinkDinoOutput, kp: torch.Tensor, batch: PoseBatch) -> list[list[PoseInstance]]:
        thr = self.detector.config.score_threshold if batch.score_threshold is None else batch.score_threshold
        top_k = self.detector.config.top_k if batch.top_k is None else batch.top_k
        scores = out.logits[-1].sigmoid()  # (B, N, P)
        points = self.absolute(kp, out.boxes[-1])  # (B, N, K, 2) normalised
        boxes = center_to_corners_format(out.boxes[-1]).clamp(0.0, 1.0)
        results = []
        for b in range(scores.shape[0]):
            w, h = batch.image_sizes[b]
            px = torch.tensor([w, h], dtype=points.dtype, device=points.device)
            row = []
            for q, p in detection_picks(scores[b, :, : len(batch.phrases[b])], top_k, thr):
                xy = points[b, q] * px  # (K, 2)
                kps = torch.cat([xy, kp[b, q, :, 2:].sigmoid()], -1).cpu().numpy()
                box = tuple((boxes[b, q] * px.repeat(2)).tolist())
                row.append(PoseInstance(p, batch.phrases[b][p], box, float(scores[b, q, p]), kps))
            results.append(row)
        return results

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, path: str | Path) -> None:
        """detector/ (DetectionDecoder layout) + keypoint_head.safetensors + keypoints.json."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.detector.save_pretrained(path / DETECTOR_SUBDIR)
        save_file(
            {k: v.contiguous() for k, v in self.head.state_dict().items()}, str(path / HEAD_WEIGHTS_FILE)
        )
        (path / KEYPOINT_CONFIG_FILE).write_text(json.dumps(self.config.model_dump(), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, detector: DetectionDecoder | None = None) -> KeypointDecoder:
        """Load a saved keypoint decoder; pass `detector` to share an already loaded one instead of detector/."""
        path = Path(path)
        cfg_file = path / KEYPOINT_CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"{path}: no {KEYPOINT_CONFIG_FILE}; expected a KeypointDecoder.save_pretrained folder"
            )
        config = KeypointConfig.model_validate_json(cfg_file.read_text())
        if detector is None:
            detector = DetectionDecoder.from_pretrained(path / DETECTOR_SUBDIR)
        decoder = cls(config, detector)
        decoder.head.load_state_dict(load_file(str(path / HEAD_WEIGHTS_FILE)))
        return decoder
