"""Helpers shared by the built-in route modules: the detector family ([DET] [SEG] [GRD] [POSE]) and the
diffusion family ([GEN] [EDIT]) each run one decoder type, so their batch builders and item conversions live here
once; each route module picks the ones it uses.

The decoder modules (decoders.detection, decoders.keypoints, decoders.diffusion) are imported inside the helpers
that run them: loading the route table (configs, the serving config, the CPU ingress) must not load Grounding DINO
or diffusers, as decoders/builtin.py builds a decoder only when one is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from router.response import mask_rle, png_base64
from router.schemas import Detection, GeneratedImage, Item, Keypoints
from router.stages import DecoderCall

if TYPE_CHECKING:
    from decoders.detection import DetectionDecoder
    from decoders.diffusion import EditDecoder, GenerationDecoder
    from decoders.keypoints import KeypointDecoder

    DetectorFamily = DetectionDecoder | KeypointDecoder  # [DET] [SEG] [GRD] run the first, [POSE] the second


# ---- shared helpers for the rows ------------------------------------------------------------
def _by_request(calls: Sequence[DecoderCall]) -> list[list[int]]:
    """Positions of `calls` grouped by request, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(calls):
        groups.setdefault(c.request, []).append(i)
    return list(groups.values())


def _need_image(call: DecoderCall) -> np.ndarray:
    if call.image is None:
        raise ValueError(f"route {call.route} needs an input image, but request {call.request} has none")
    return call.image


def _seeds(calls: Sequence[DecoderCall]) -> list[int] | None:
    """One seed per call: the request's seed offset by the event index, so two [GEN] in one answer differ."""
    if all(c.options.seed is None for c in calls):
        return None
    fresh = np.random.default_rng()
    return [
        int(c.options.seed) + c.event if c.options.seed is not None else int(fresh.integers(2**31))
        for c in calls
    ]


# ---- [DET] [SEG] [GRD] -> detector ----------------------------------------------------------
def detector_batch(
    calls: Sequence[DecoderCall], projected: torch.Tensor, decoder: DetectorFamily
) -> tuple[Any, list[list[int]]]:
    """One detector item per request; its phrases are that request's calls of this route."""
    from decoders.detection import DetectionBatch  # lazy: see the module docstring
    from decoders.keypoints import PoseBatch

    owners = _by_request(calls)
    p_max, (q, c) = max(len(o) for o in owners), projected.shape[1:]
    states = projected.new_zeros(len(owners), p_max, q, c)  # (B, P, Q, C)
    mask = torch.zeros(len(owners), p_max, dtype=torch.bool, device=projected.device)  # (B, P)
    for b, own in enumerate(owners):
        states[b, : len(own)] = projected[own]
        mask[b, : len(own)] = True
    pose = calls[0].route == "POSE"
    batch = (PoseBatch if pose else DetectionBatch).from_images(
        [_need_image(calls[o[0]]) for o in owners],
        states,
        mask,
        [[calls[i].phrase or f"phrase {i}" for i in o] for o in owners],
        decoder.detector.config if pose else decoder.config,
        task="det" if pose else calls[0].route.lower(),
        score_threshold=min(c.options.score_threshold for c in calls),
    )
    return batch, owners


def detector_items(prediction: Any, calls: Sequence[DecoderCall], decoder: DetectorFamily) -> list[list[Item]]:
    """Detections of phrase j belong to owner call j; each call's own score threshold applies."""
    out: list[list[Item]] = [[] for _ in calls]
    for d in prediction:
        call = calls[d.phrase_index]
        if d.score < call.options.score_threshold and call.route != "GRD":
            continue
        mask = mask_rle(d.mask) if d.mask is not None else None
        out[d.phrase_index].append(
            Detection(
                route=call.route,
                phrase=call.phrase,
                image=call.image_index or 0,
                label=call.phrase,
                box=tuple(float(v) for v in d.box),
                score=float(d.score),
                mask=mask,
            )
        )
    return out


def keypoint_items(prediction: Any, calls: Sequence[DecoderCall], decoder: KeypointDecoder) -> list[list[Item]]:
    out: list[list[Item]] = [[] for _ in calls]
    for inst in prediction:
        call = calls[inst.phrase_index]
        if inst.score < call.options.score_threshold:
            continue
        kps = [(float(x), float(y), float(v)) for x, y, v in inst.keypoints]
        out[inst.phrase_index].append(
            Keypoints(
                route=call.route,
                phrase=call.phrase,
                image=call.image_index or 0,
                label=call.phrase,
                box=tuple(float(v) for v in inst.box),
                score=float(inst.score),
                keypoints=kps,
            )
        )
    return out


def _groups_by_row(rows: Sequence[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for n, r in enumerate(rows):
        groups.setdefault(r, []).append(n)
    return list(groups.values())


def detector_train_batch(
    projected: torch.Tensor,
    rows: Sequence[int],
    targets: Sequence[Any],
    images: Sequence[Any],
    decoder: DetectorFamily,
) -> tuple[Any, Any]:
    """One detector item per row; phrase j of a row is its j-th group; target labels index phrases."""
    from decoders.detection import DetectionBatch, DetectionTarget
    from decoders.keypoints import PoseBatch, PoseTarget

    route = targets[0].route
    owners = _groups_by_row(rows)
    p_max, (q, c) = max(len(o) for o in owners), projected.shape[1:]
    states = projected.new_zeros(len(owners), p_max, q, c)  # (B, P, Q, C)
    mask = torch.zeros(len(owners), p_max, dtype=torch.bool, device=projected.device)
    dec_targets = []
    for b, own in enumerate(owners):
        states[b, : len(own)] = projected[own]
        mask[b, : len(own)] = True
        dec_targets.append(_detection_target(route, [targets[n] for n in own], DetectionTarget, PoseTarget))
    pose = route == "POSE"
    batch = (PoseBatch if pose else DetectionBatch).from_images(
        [images[rows[o[0]]] for o in owners], states, mask, [[targets[n].phrase for n in o] for o in owners],
        decoder.detector.config if pose else decoder.config, task="det" if pose else route.lower(),
    )  # fmt: skip
    return batch, dec_targets


def _detection_target(route: str, phrase_targets: Sequence[Any], det_cls: type, pose_cls: type) -> Any:
    """A row's RouteTargets (one per phrase) -> one DetectionTarget / PoseTarget with phrase labels."""
    boxes = torch.from_numpy(np.concatenate([t.boxes for t in phrase_targets]).astype(np.float32)).reshape(
        -1, 4
    )
    labels = torch.tensor(
        [j for j, t in enumerate(phrase_targets) for _ in range(len(t.boxes))], dtype=torch.long
    )
    if route == "POSE":
        kps = np.concatenate([t.keypoints for t in phrase_targets]).astype(np.float32)
        return pose_cls(boxes, labels, keypoints=torch.from_numpy(kps))
    masks = None
    if route == "SEG":
        masks = torch.from_numpy(np.concatenate([t.masks for t in phrase_targets]).astype(bool))
    return det_cls(boxes, labels, masks)


# ---- [GEN] [EDIT] -> generator, editor --------------------------------------------------------
def generator_batch(
    calls: Sequence[DecoderCall], projected: torch.Tensor, decoder: GenerationDecoder
) -> tuple[Any, list[list[int]]]:
    """One image per call; steps and guidance come from the first call's options (one sampler run)."""
    from decoders.diffusion import GenerationBatch

    o = calls[0].options
    batch = GenerationBatch(projected, steps=o.steps, guidance_scale=o.guidance_scale, seeds=_seeds(calls))
    return batch, [[i] for i in range(len(calls))]


def editor_batch(
    calls: Sequence[DecoderCall], projected: torch.Tensor, decoder: EditDecoder
) -> tuple[Any, list[list[int]]]:
    from decoders.diffusion import EditBatch

    o = calls[0].options
    batch = EditBatch(
        projected,
        steps=o.steps,
        guidance_scale=o.guidance_scale,
        seeds=_seeds(calls),
        source_images=[_need_image(c) for c in calls],
        image_guidance_scale=o.image_guidance_scale,
    )
    return batch, [[i] for i in range(len(calls))]


def target_texts(targets: Sequence[Any]) -> list[str] | None:
    """What each image target shows, in words ("red circle blue square"), when every target lists its objects."""
    if any(t.objects is None for t in targets):
        return None
    return [" ".join(f"{o['color']} {o['kind']}" for o in t.objects) for t in targets]


def generator_train_batch(
    projected: torch.Tensor,
    rows: Sequence[int],
    targets: Sequence[Any],
    images: Sequence[Any],
    decoder: GenerationDecoder,
) -> tuple[Any, Any]:
    from decoders.diffusion import DiffusionTargets, GenerationBatch

    return GenerationBatch(projected), DiffusionTargets(
        [t.image for t in targets], texts=target_texts(targets)
    )


def editor_train_batch(
    projected: torch.Tensor,
    rows: Sequence[int],
    targets: Sequence[Any],
    images: Sequence[Any],
    decoder: EditDecoder,
) -> tuple[Any, Any]:
    from decoders.diffusion import DiffusionTargets, EditBatch

    sources = [images[r] for r in rows]
    if any(s is None for s in sources):
        raise ValueError("an [EDIT] training row has no source image")
    return EditBatch(projected, source_images=sources), DiffusionTargets(
        [t.image for t in targets], texts=target_texts(targets)
    )


def image_items(prediction: Any, calls: Sequence[DecoderCall], decoder: GenerationDecoder | EditDecoder) -> list[list[Item]]:
    (call,) = calls
    h, w = prediction.image.shape[:2]
    source = call.image_index if call.route == "EDIT" else None
    item = GeneratedImage(
        route=call.route,
        phrase=call.phrase,
        image=call.image_index or 0,
        png_base64=png_base64(prediction.image),
        width=w,
        height=h,
        source_image=source,
    )
    return [[item]]
