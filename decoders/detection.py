"""[DET] / [SEG] / [GRD]: Grounding DINO whose text features are phrase link vectors, plus a mask head.

As in VisionLLM v2 (`OVGroundingDinoForObjectDetection`), the BERT text backbone
is bypassed: each phrase's projected link queries (Q, C) are averaged into one
vector, and those vectors take the place of the text token features in the
encoder fusion, the decoder cross-attention and the contrastive class head.
Phrases are independent categories: the text self-attention mask is the
identity and every phrase has position id 0.

The mask head is Mask-DINO style: an MLP of each object query dotted with a
per-pixel embedding made by a small conv on the encoder's highest-resolution
level, at `mask_size`, upsampled to the image for predictions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig
from transformers.image_transforms import center_to_corners_format, corners_to_center_format

from decoders.base import DecoderInputError, DecoderOutput, check_link_states
from decoders.config import DetectorConfig
from decoders.images import ImageInput, prepare_images
from decoders.matching import (
    ImageTarget,
    LossWeights,
    box_losses,
    class_loss,
    mask_losses,
    match,
    num_boxes_of,
)
from decoders.text_encoder import FrozenTextEncoder
from mllm.config import require_folder

Task = Literal["det", "seg", "grd"]
TASKS: tuple[str, ...] = ("det", "seg", "grd")
DETECTOR_CONFIG_FILE = "detector.json"
PRIOR_PROB = 0.01  # initial match probability of a (query, phrase) pair under logit_calibration (RetinaNet/DINO)


# ----------------------------------------------------------------------------- model


@dataclass
class LinkDinoOutput:
    """Per-decoder-layer predictions; L = decoder layers, N = object queries, P = phrases."""

    logits: torch.Tensor  # (L, B, N, P) contrastive logits; -inf at padded phrases
    boxes: torch.Tensor  # (L, B, N, 4) normalised cxcywh
    hidden: torch.Tensor  # (B, N, D) last decoder layer's object queries (layer-normed)
    text: torch.Tensor  # (B, P, D) phrase features after encoder fusion
    mask_logits: torch.Tensor | None = None  # (B, N, M, M) when a mask size was asked for
    # Two-stage proposals behind the decoder's initial queries, when asked for (encoder-side loss):
    enc_logits: torch.Tensor | None = None  # (B, N, P) contrastive logits of the top-k proposals
    enc_boxes: torch.Tensor | None = None  # (B, N, 4) their normalised cxcywh boxes (not detached)


@dataclass
class _Levels:
    """Flattened multi-scale image features, the encoder's input."""

    source: torch.Tensor  # (B, S, D) all levels' pixels
    mask: torch.Tensor  # (B, S) True = real pixel
    pos: torch.Tensor  # (B, S, D) position + level embedding
    shapes: torch.Tensor  # (levels, 2)
    shapes_list: list[tuple[int, int]]
    start_index: torch.Tensor  # (levels,)
    valid_ratios: torch.Tensor  # (B, levels, 2)


class LinkGroundingDino(GroundingDinoForObjectDetection):
    """GroundingDinoForObjectDetection with phrase link vectors in place of BERT features, and a mask head.

    The text backbone and its projection are dropped (link states arrive already
    projected to d_model); a standard Grounding DINO folder still loads, its
    BERT weights ignored and the mask head initialised fresh.
    """

    _keys_to_ignore_on_load_unexpected = (
        GroundingDinoForObjectDetection._keys_to_ignore_on_load_unexpected
        + [
            r"model\.text_backbone\..*",
            r"model\.text_projection\..*",
        ]
    )

    def __init__(self, config: GroundingDinoConfig):
        super().__init__(config)
        del self.model.text_backbone, self.model.text_projection
        d = config.d_model
        self.mask_embed = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)
        )
        self.mask_features = nn.Conv2d(d, d, kernel_size=3, padding=1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        text_features: torch.Tensor,
        text_mask: torch.Tensor,
        mask_size: int | None = None,
        proposals: bool = False,
    ) -> LinkDinoOutput:
        """pixel_values (B, 3, S, S), text_features (B, P, D) one vector per phrase, text_mask (B, P) True = real.

        proposals=True also returns the two-stage top-k proposals' logits and boxes, for the encoder-side loss.
        """
        if text_features.shape[1] > self.config.max_text_len:
            raise DecoderInputError(
                f"{text_features.shape[1]} phrases exceed the detector's max_text_len {self.config.max_text_len}"
            )
        levels = self._image_levels(pixel_values)
        vision, text = self._encode(levels, text_features, text_mask)
        target, reference, enc = self._initial_queries(vision, text, levels, text_mask)
        dec = self.model.decoder(
            inputs_embeds=target,
            vision_encoder_hidden_states=vision,
            vision_encoder_attention_mask=levels.mask,
            text_encoder_hidden_states=text,
            text_encoder_attention_mask=~text_mask,
            reference_points=reference,
            spatial_shapes=levels.shapes,
            spatial_shapes_list=levels.shapes_list,
            level_start_index=levels.start_index,
            valid_ratios=levels.valid_ratios,
            return_dict=True,
        )
        logits, boxes = self._heads(
            dec.intermediate_hidden_states, reference, dec.intermediate_reference_points, text, text_mask
        )
        hidden = dec.intermediate_hidden_states[:, -1]  # (B, N, D)
        masks = self._mask_logits(hidden, vision, levels, mask_size) if mask_size else None
        enc_logits, enc_boxes = enc if proposals and enc is not None else (None, None)
        return LinkDinoOutput(logits=logits, boxes=boxes, hidden=hidden, text=text, mask_logits=masks,
                              enc_logits=enc_logits, enc_boxes=enc_boxes)

    def _image_levels(self, pixel_values: torch.Tensor) -> _Levels:
        """Swin features projected to d_model, extra strided levels, flattened (as GroundingDinoModel.forward)."""
        m, cfg = self.model, self.config
        b, _, h, w = pixel_values.shape
        pixel_mask = torch.ones((b, h, w), dtype=torch.long, device=pixel_values.device)
        features, pos_list = m.backbone(pixel_values, pixel_mask)
        maps = [m.input_proj_vision[i](src) for i, (src, _) in enumerate(features)]
        masks = [mask for _, mask in features]
        for level in range(len(maps), cfg.num_feature_levels):
            src = m.input_proj_vision[level](features[-1][0] if level == len(features) else maps[-1])
            mask = F.interpolate(pixel_mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            maps.append(src)
            masks.append(mask)
            pos_list.append(m.backbone.position_embedding(src, mask).to(src.dtype))
        shapes_list = [tuple(x.shape[-2:]) for x in maps]
        shapes = torch.as_tensor(shapes_list, dtype=torch.long, device=pixel_values.device)
        return _Levels(
            source=torch.cat([x.flatten(2).transpose(1, 2) for x in maps], 1),
            mask=torch.cat([x.flatten(1) for x in masks], 1),
            pos=torch.cat(
                [
                    p.flatten(2).transpose(1, 2) + m.level_embed[i].view(1, 1, -1)
                    for i, p in enumerate(pos_list)
                ],
                1,
            ),
            shapes=shapes,
            shapes_list=shapes_list,
            start_index=torch.cat((shapes.new_zeros((1,)), shapes.prod(1).cumsum(0)[:-1])),
            valid_ratios=torch.stack([m.get_valid_ratio(x, dtype=maps[0].dtype) for x in masks], 1),
        )

    def _encode(
        self, levels: _Levels, text_features: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion encoder; phrases are independent (identity self-attention) and share position id 0."""
        b, p, _ = text_features.shape
        eye = torch.eye(p, dtype=torch.bool, device=text_features.device).expand(b, p, p)
        enc = self.model.encoder(
            vision_features=levels.source,
            vision_attention_mask=~levels.mask,
            vision_position_embedding=levels.pos,
            spatial_shapes=levels.shapes,
            spatial_shapes_list=levels.shapes_list,
            level_start_index=levels.start_index,
            valid_ratios=levels.valid_ratios,
            text_features=text_features,
            text_attention_mask=~text_mask,
            text_position_embedding=None,
            text_self_attention_masks=~eye,
            text_position_ids=torch.zeros((b, p), dtype=torch.long, device=text_features.device),
            return_dict=True,
        )
        return enc.last_hidden_state_vision, enc.last_hidden_state_text  # (B, S, D), (B, P, D)

    def _initial_queries(
        self, vision: torch.Tensor, text: torch.Tensor, levels: _Levels, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Decoder input queries (B, N, D), reference boxes (B, N, 4): two-stage top-k proposals or learned.

        Third: the top-k proposals' logits (B, N, P) and boxes (B, N, 4) with their gradient (two-stage only).
        """
        m, cfg = self.model, self.config
        b = vision.shape[0]
        query_embeds = (
            m.query_position_embeddings.weight if (cfg.embedding_init_target or not cfg.two_stage) else None
        )
        if not cfg.two_stage:
            reference = m.reference_points.weight.unsqueeze(0).repeat(b, 1, 1).sigmoid()
            return query_embeds.unsqueeze(0).repeat(b, 1, 1), reference, None
        object_query, proposals = m.generate_encoder_output_proposals(
            vision, ~levels.mask, levels.shapes_list
        )
        enc_class = m.encoder_output_class_embed(object_query, text, text_mask)  # (B, S, max_text_len)
        coord_logits = m.encoder_output_bbox_embed(object_query) + proposals  # (B, S, 4)
        topk = torch.topk(enc_class.max(-1)[0], cfg.num_queries, dim=1)[1]  # (B, N)
        topk_coords = torch.gather(coord_logits, 1, topk.unsqueeze(-1).repeat(1, 1, 4))  # (B, N, 4)
        topk_logits = torch.gather(enc_class, 1, topk.unsqueeze(-1).repeat(1, 1, enc_class.shape[-1]))
        enc = (topk_logits[..., : text.shape[1]], topk_coords.sigmoid())
        reference = topk_coords.detach().sigmoid()
        if query_embeds is not None:
            return query_embeds.unsqueeze(0).repeat(b, 1, 1), reference, enc
        target = torch.gather(object_query, 1, topk.unsqueeze(-1).repeat(1, 1, cfg.d_model)).detach()
        return target, reference, enc

    def _heads(
        self,
        hidden: torch.Tensor,
        init_reference: torch.Tensor,
        inter_references: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per decoder layer: contrastive logits (L, B, N, P) and refined boxes (L, B, N, 4)."""
        p = text.shape[1]
        logits, boxes = [], []
        for level in range(hidden.shape[1]):
            reference = init_reference if level == 0 else inter_references[:, level - 1]
            reference = torch.special.logit(reference, eps=1e-5)
            logits.append(self.class_embed[level](hidden[:, level], text, text_mask)[..., :p])
            delta = self.bbox_embed[level](hidden[:, level])
            if reference.shape[-1] == 2:  # point references (query_dim 2) refine only the centre
                delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            else:
                delta = delta + reference
            boxes.append(delta.sigmoid())
        return torch.stack(logits), torch.stack(boxes)

    def _mask_logits(
        self, hidden: torch.Tensor, vision: torch.Tensor, levels: _Levels, size: int
    ) -> torch.Tensor:
        """Query MLP x per-pixel embedding of the highest-resolution encoder level -> (B, N, M, M)."""
        h, w = levels.shapes_list[0]
        first = vision[:, : h * w].transpose(1, 2).reshape(vision.shape[0], -1, h, w)  # (B, D, h, w)
        pixels = self.mask_features(first)
        pixels = F.interpolate(
            pixels, size=(size, size), mode="bilinear", align_corners=False
        )  # (B, D, M, M)
        return torch.einsum("bnd,bdhw->bnhw", self.mask_embed(hidden), pixels)


def grounding_dino_config(cfg: DetectorConfig) -> GroundingDinoConfig:
    """A small Grounding DINO built from a DetectorConfig (Swin backbone; the BERT stub is dropped at init)."""
    heads = [max(1, min(cfg.num_heads, 2**i)) for i in range(4)]
    embed = cfg.backbone_embed_dim
    heads = [h if (embed * 2**i) % h == 0 else 1 for i, h in enumerate(heads)]
    return GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=embed,
            depths=list(cfg.backbone_depths),
            num_heads=heads,
            window_size=4,
            image_size=cfg.image_size,
            out_indices=[2, 3, 4],
        ),
        # Never instantiated for long: LinkGroundingDino deletes it; kept tiny so building is cheap.
        text_config=BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=8
        ),
        d_model=cfg.d_model,
        num_queries=cfg.num_queries,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        encoder_n_points=cfg.num_points,
        decoder_n_points=cfg.num_points,
        max_text_len=cfg.max_phrases,
        fusion_droppath=0.0,
    )


# ----------------------------------------------------------------------------- decoder I/O


@dataclass
class DetectionBatch:
    """Decoder input. phrase_mask[b] is True for the first len(phrases[b]) phrases and False after."""

    pixel_values: torch.Tensor  # (B, 3, S, S) from prepare_images
    image_sizes: list[tuple[int, int]]  # original (w, h) per image
    phrase_states: torch.Tensor  # (B, P, Q, C) projected link states
    phrase_mask: torch.Tensor  # (B, P) bool
    phrases: list[list[str]]
    task: Task | list[Task] = "det"
    score_threshold: float | None = None  # None -> DetectorConfig.score_threshold
    top_k: int | None = None  # None -> DetectorConfig.top_k

    @classmethod
    def from_images(
        cls,
        images: list[ImageInput],
        phrase_states: torch.Tensor,
        phrase_mask: torch.Tensor,
        phrases: list[list[str]],
        config: DetectorConfig,
        **options,
    ) -> DetectionBatch:
        """Resize raw images of any size to the detector's square input, keeping their original sizes."""
        pixel_values, sizes = prepare_images(images, config.image_size, config.max_image_pixels)
        return cls(pixel_values, sizes, phrase_states, phrase_mask, phrases, **options)

    def tasks(self) -> list[str]:
        b = len(self.image_sizes)
        return [self.task] * b if isinstance(self.task, str) else list(self.task)


@dataclass
class DetectionTarget:
    """Targets for one image, in ORIGINAL pixel coordinates."""

    boxes: torch.Tensor  # (n, 4) xyxy pixels
    labels: torch.Tensor  # (n,) phrase index
    masks: torch.Tensor | None = None  # (n, H, W) bool at the original size


@dataclass
class Detection:
    phrase_index: int
    phrase: str
    box: tuple[float, float, float, float]  # xyxy, original pixels
    score: float
    mask: np.ndarray | None = field(default=None, repr=False)  # (H, W) bool, original size ([SEG] only)


# ----------------------------------------------------------------------------- validation


def validate_batch(batch: DetectionBatch, config: DetectorConfig, link_dim: int) -> None:
    """Every check on a DetectionBatch; raises DecoderInputError naming the field."""
    if not isinstance(batch, DetectionBatch):
        raise DecoderInputError(f"expected a DetectionBatch (or PoseBatch), got {type(batch).__name__}")
    pv = batch.pixel_values
    s = config.image_size
    if not isinstance(pv, torch.Tensor) or pv.dim() != 4 or tuple(pv.shape[1:]) != (3, s, s):
        got = tuple(pv.shape) if isinstance(pv, torch.Tensor) else type(pv).__name__
        raise DecoderInputError(f"pixel_values: expected (B, 3, {s}, {s}) from prepare_images, got {got}")
    b = pv.shape[0]
    if len(batch.image_sizes) != b:
        raise DecoderInputError(f"image_sizes: expected {b} (w, h) pairs, got {len(batch.image_sizes)}")
    for i, (w, h) in enumerate(batch.image_sizes):
        if w < 1 or h < 1 or w * h > config.max_image_pixels:
            raise DecoderInputError(
                f"image_sizes[{i}]: {w}x{h} is outside the accepted range (1 .. {config.max_image_pixels} pixels)"
            )
    validate_phrases(batch, b, config.max_phrases, link_dim)
    tasks = batch.tasks()
    if len(tasks) != b or any(t not in TASKS for t in tasks):
        raise DecoderInputError(f"task: expected one of {TASKS} or a list of {b} of them, got {batch.task!r}")


def validate_phrases(batch, b: int, max_phrases: int, link_dim: int) -> None:
    """phrase_states (B, P, Q, C), phrase_mask (B, P) left-aligned, phrases matching the mask."""
    states, mask = batch.phrase_states, batch.phrase_mask
    check_link_states(states, "phrase_states", link_dim)
    if states.dim() != 4 or states.shape[0] != b:
        raise DecoderInputError(
            f"phrase_states: expected (B={b}, P, Q, {link_dim}), got {tuple(states.shape)}"
        )
    p = states.shape[1]
    if p < 1 or p > max_phrases:
        raise DecoderInputError(f"phrase_states: {p} phrases per image; accepted 1 .. {max_phrases}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (b, p):
        got = (tuple(mask.shape), mask.dtype) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise DecoderInputError(f"phrase_mask: expected a bool tensor of shape ({b}, {p}), got {got}")
    if len(batch.phrases) != b:
        raise DecoderInputError(f"phrases: expected {b} lists of phrases, got {len(batch.phrases)}")
    for i, names in enumerate(batch.phrases):
        n = len(names)
        if n == 0:
            raise DecoderInputError(f"phrases[{i}]: empty phrase list; every image needs at least one phrase")
        expected = torch.arange(p, device=mask.device) < n
        if n > p or not torch.equal(mask[i], expected):
            raise DecoderInputError(
                f"phrase_mask[{i}]: must be True for the first {n} phrases (len(phrases[{i}])) and False after, "
                f"got {mask[i].tolist()}"
            )


def validate_targets(targets: list[DetectionTarget], batch) -> None:
    """Boxes inside the original image as xyxy, labels naming a real phrase, masks at the original size."""
    if len(targets) != len(batch.image_sizes):
        raise DecoderInputError(
            f"targets: expected {len(batch.image_sizes)} (one per image), got {len(targets)}"
        )
    for i, (t, (w, h)) in enumerate(zip(targets, batch.image_sizes, strict=True)):
        n_phr = len(batch.phrases[i])
        if t.boxes.dim() != 2 or t.boxes.shape[1] != 4 or t.labels.shape != (t.boxes.shape[0],):
            raise DecoderInputError(
                f"targets[{i}]: expected boxes (n, 4) and labels (n,), got {tuple(t.boxes.shape)}, {tuple(t.labels.shape)}"
            )
        if not torch.isfinite(t.boxes).all() or (t.boxes[:, 2:] < t.boxes[:, :2]).any():
            raise DecoderInputError(f"targets[{i}].boxes: must be finite xyxy with x2 >= x1 and y2 >= y1")
        if t.labels.numel() and (t.labels.min() < 0 or t.labels.max() >= n_phr):
            raise DecoderInputError(
                f"targets[{i}].labels: phrase indices must lie in [0, {n_phr}), got {t.labels.tolist()}"
            )
        if t.masks is not None and tuple(t.masks.shape) != (t.boxes.shape[0], h, w):
            raise DecoderInputError(
                f"targets[{i}].masks: expected ({t.boxes.shape[0]}, {h}, {w}) at the original size, got {tuple(t.masks.shape)}"
            )


def normalise_targets(
    targets: list[DetectionTarget], sizes: list[tuple[int, int]], mask_size: int, device: torch.device
) -> list[ImageTarget]:
    """Pixel xyxy -> normalised cxcywh; masks -> soft (n, M, M) at mask_size; all on the model's device."""
    out = []
    for t, (w, h) in zip(targets, sizes, strict=True):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        boxes = corners_to_center_format((t.boxes.to(device, torch.float32) / scale).clamp(0.0, 1.0))
        masks = None
        if t.masks is not None:
            masks = t.masks.to(device, torch.float32)[:, None]
            masks = F.interpolate(masks, size=(mask_size, mask_size), mode="area")[:, 0]
        out.append(ImageTarget(labels=t.labels.to(device, torch.long), boxes=boxes, masks=masks))
    return out


# ----------------------------------------------------------------------------- decoder


class DetectionDecoder(nn.Module):
    """[DET]/[SEG]/[GRD] decoder: `decoder(batch, targets=None) -> DecoderOutput` with Detection lists."""

    def __init__(self, config: DetectorConfig, model: LinkGroundingDino | None = None):
        super().__init__()
        self.config = config
        self.model = model if model is not None else LinkGroundingDino(grounding_dino_config(config))
        if self.model.config.max_text_len < config.max_phrases:
            raise ValueError(
                f"detector max_text_len {self.model.config.max_text_len} < max_phrases {config.max_phrases}"
            )
        self.weights = LossWeights()
        self.text_encoder = FrozenTextEncoder(self.link_dim, 1) if config.align_weight > 0 else None
        if config.logit_calibration:
            self.logit_scale = nn.Parameter(torch.zeros(()))  # log temperature
            self.logit_bias = nn.Parameter(torch.tensor(-math.log((1 - PRIOR_PROB) / PRIOR_PROB)))

    @property
    def link_dim(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw contrastive dot products -> q.t / sqrt(d) * exp(s) + b (identity without logit_calibration)."""
        if not self.config.logit_calibration:
            return logits
        real = torch.isfinite(logits)  # padded phrases hold -inf; keep them out of the product (0 * inf = nan)
        scaled = logits.masked_fill(~real, 0.0) * (self.logit_scale.exp() / math.sqrt(self.link_dim)) + self.logit_bias
        return scaled.masked_fill(~real, float("-inf"))

    def run(self, batch: DetectionBatch, with_masks: bool) -> LinkDinoOutput:
        """Validate and run the detector; phrase vectors are the mean of each phrase's link queries."""
        validate_batch(batch, self.config, self.link_dim)
        # Inputs arrive from anywhere (CPU images, link states in the LLM's device and dtype): bring them here.
        device, dtype = self.device, self.model.dtype
        text = batch.phrase_states.to(device, dtype).mean(dim=2)  # (B, P, Q, C) -> (B, P, C)
        mask_size = self.config.mask_size if with_masks else None
        proposals = self.training and self.config.encoder_loss
        pixels, mask = batch.pixel_values.to(device, dtype), batch.phrase_mask.to(device)
        out = self.model(pixels, text, mask, mask_size=mask_size, proposals=proposals)
        out.logits = self.calibrate(out.logits)
        if out.enc_logits is not None:
            out.enc_logits = self.calibrate(out.enc_logits)
        return out

    def forward(self, batch: DetectionBatch, targets: list[DetectionTarget] | None = None) -> DecoderOutput:
        validate_batch(batch, self.config, self.link_dim)
        if targets is not None:
            validate_targets(targets, batch)
        with_masks = "seg" in batch.tasks() or (
            targets is not None and any(t.masks is not None for t in targets)
        )
        out = self.run(batch, with_masks)
        predictions = self.predict(out, batch)
        if targets is None:
            return DecoderOutput(predictions=predictions)
        norm = normalise_targets(targets, batch.image_sizes, self.config.mask_size, out.boxes.device)
        loss, losses, _ = self.set_loss(out, batch.phrase_mask, norm)
        if self.text_encoder is not None:
            align = self.align_loss(batch)
            loss = loss + self.config.align_weight * align
            losses["loss_align"] = align.detach()
        return DecoderOutput(predictions=predictions, loss=loss, losses=losses)

    def align_loss(self, batch: DetectionBatch) -> torch.Tensor:
        """MSE between the real phrases' link vectors (queries averaged) and their frozen text embeddings."""
        mask = batch.phrase_mask.to(self.device)
        links = batch.phrase_states.to(self.device).float().mean(dim=2)[mask]  # (n real phrases, C)
        names = [name for names in batch.phrases for name in names]
        return F.mse_loss(links, self.text_encoder.pooled(names).to(links.device))

    def set_loss(
        self, out: LinkDinoOutput, phrase_mask: torch.Tensor, targets: list[ImageTarget]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list]:
        """Matched loss on every decoder layer (auxiliary losses); masks on the last. Returns last-layer indices.

        With the two-stage proposals in `out` (encoder_loss), their own matched class + box loss is added.
        """
        w, nb = self.weights, num_boxes_of(targets)
        total, losses, indices = 0.0, {}, []
        if out.enc_logits is not None:
            enc_indices = [match(out.enc_logits[b], out.enc_boxes[b], t, None, w) for b, t in enumerate(targets)]
            enc_l1, enc_giou = box_losses(out.enc_boxes, targets, enc_indices, nb)
            enc_class = class_loss(out.enc_logits, phrase_mask, targets, enc_indices, nb)
            total = w.class_ * enc_class + w.bbox * enc_l1 + w.giou * enc_giou
        layers = out.logits.shape[0]
        for layer in range(layers):
            last = layer == layers - 1
            masks = out.mask_logits if last else None
            indices = [
                match(out.logits[layer, b], out.boxes[layer, b], t, None if masks is None else masks[b], w)
                for b, t in enumerate(targets)
            ]
            parts = {"loss_class": class_loss(out.logits[layer], phrase_mask, targets, indices, nb)}
            parts["loss_bbox"], parts["loss_giou"] = box_losses(out.boxes[layer], targets, indices, nb)
            if masks is not None:
                parts["loss_mask"], parts["loss_dice"] = mask_losses(masks, targets, indices, nb)
            weighted = (
                w.class_ * parts["loss_class"] + w.bbox * parts["loss_bbox"] + w.giou * parts["loss_giou"]
            )
            if masks is not None:
                weighted = weighted + w.mask * parts["loss_mask"] + w.dice * parts["loss_dice"]
            total = total + weighted
            if last:
                losses = {k: v.detach() for k, v in parts.items()}
                if out.enc_logits is not None:
                    losses["loss_enc"] = (enc_class + enc_l1 + enc_giou).detach()
        return total, losses, indices

    # ------------------------------------------------------------------ predictions

    @torch.no_grad()
    def predict(self, out: LinkDinoOutput, batch: DetectionBatch) -> list[list[Detection]]:
        thr = self.config.score_threshold if batch.score_threshold is None else batch.score_threshold
        top_k = self.config.top_k if batch.top_k is None else batch.top_k
        scores = out.logits[-1].sigmoid()  # (B, N, P); padded phrases score 0
        boxes = center_to_corners_format(out.boxes[-1]).clamp(0.0, 1.0)  # (B, N, 4)
        results = []
        for b, task in enumerate(batch.tasks()):
            if task == "grd":
                picks = grounding_picks(scores[b], len(batch.phrases[b]))
            else:
                picks = detection_picks(scores[b, :, : len(batch.phrases[b])], top_k, thr)
            masks = out.mask_logits[b] if (task == "seg" and out.mask_logits is not None) else None
            results.append([self._detection(q, p, scores[b], boxes[b], masks, batch, b) for q, p in picks])
        return results

    def _detection(self, q: int, p: int, scores, boxes, masks, batch: DetectionBatch, b: int) -> Detection:
        w, h = batch.image_sizes[b]
        x1, y1, x2, y2 = (
            boxes[q] * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        ).tolist()
        mask = None
        if masks is not None:
            up = F.interpolate(masks[q][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            mask = (up > 0).cpu().numpy()
        return Detection(p, batch.phrases[b][p], (x1, y1, x2, y2), float(scores[q, p]), mask)

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, path: str | Path, config: DetectorConfig | None = None) -> DetectionDecoder:
        """Load a transformers Grounding DINO folder (BERT weights dropped, mask head fresh) or a saved decoder."""
        path = require_folder(path, "a Grounding DINO checkpoint")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; expected a transformers Grounding DINO folder")
        model = LinkGroundingDino.from_pretrained(path)
        if config is None:
            config = cls._config_for(path, model.config)
        return cls(config, model)

    @staticmethod
    def _config_for(path: Path, gd: GroundingDinoConfig) -> DetectorConfig:
        saved = path / DETECTOR_CONFIG_FILE
        if saved.is_file():
            return DetectorConfig.model_validate_json(saved.read_text())
        return DetectorConfig(
            pretrained=str(path),
            d_model=gd.d_model,
            num_queries=gd.num_queries,
            encoder_layers=gd.encoder_layers,
            decoder_layers=gd.decoder_layers,
            max_phrases=gd.max_text_len,
            num_heads=gd.encoder_attention_heads,
            ffn_dim=gd.encoder_ffn_dim,
            num_points=gd.encoder_n_points,
            # Record the checkpoint's backbone so a re-saved detector.json describes it truly.
            backbone_embed_dim=getattr(gd.backbone_config, "embed_dim", 16),
            backbone_depths=list(getattr(gd.backbone_config, "depths", [1, 1, 1, 1]))[:4],
        )

    def save_pretrained(self, path: str | Path) -> None:
        """config.json + model.safetensors (transformers layout, mask head included) + detector.json."""
        path = Path(path)
        self.model.save_pretrained(path)
        saved = self.config.model_copy(update={"pretrained": None})  # the folder itself holds the weights now
        (path / DETECTOR_CONFIG_FILE).write_text(json.dumps(saved.model_dump(), indent=2))


def grounding_picks(scores: torch.Tensor, num_phrases: int) -> list[tuple[int, int]]:
    """[GRD]: the best query for every phrase. scores (N, P) -> [(query, phrase)]."""
    best = scores[:, :num_phrases].argmax(dim=0)  # (p,)
    return [(int(best[p]), p) for p in range(num_phrases)]


def detection_picks(scores: torch.Tensor, top_k: int, threshold: float) -> list[tuple[int, int]]:
    """[DET]/[SEG]: top-k (query, phrase) pairs over the flattened (N, P) scores of real phrases, above the threshold."""
    n, p = scores.shape
    values, flat = scores.flatten().topk(min(top_k, n * p))
    keep = values >= threshold
    return [(int(i) // p, int(i) % p) for i in flat[keep]]
