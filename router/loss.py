"""The joint training loss: LM loss + sum over routes of weight x decoder loss.

    batch = collate(processor, samples)            # TaskSamples (answers hold [ROUTE] tokens)
    out = joint_loss(system, batch, {"GEN": 0.5})  # out.total, out.parts["lm"], out.parts["DET"], ...

model.forward gathers each route's link states by mask (N groups, row-major, in answer
order), so the k-th group of a route in row r answers the k-th RouteTarget of that route
in sample r. Each route's states are projected and fed to its decoder with those targets;
the decoder loss flows back through the projector and the LLM into the query tables
(and LoRA / the LLM when they train).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mllm.format_queries import format_loss
from router.bindings import SuperLinkSystem

IGNORE_INDEX = -100
FORMAT_TASKS = ("native_detection",)  # tasks whose answers the format queries learn (native boxes)


@dataclass
class TrainBatch:
    inputs: dict[str, Any]  # processor output with labels: input_ids, attention_mask, labels, pixel_values, ...
    samples: list[Any]  # router.samples.TaskSample, one per row

    @property
    def images(self) -> list[np.ndarray | None]:
        """The image each row's decoders see (the sample's input image)."""
        return [s.image for s in self.samples]


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar, what backward() runs on
    parts: dict[str, torch.Tensor]  # "lm" and one entry per route present; weighted parts sum to total
    lm_per_task: dict[str, float]  # mean LM loss of each task's rows (detached, for logging)
    health: dict[str, float] = field(default_factory=dict)  # link health (joint_loss(..., health=True))


def collate(processor: Any, samples: Sequence[Any]) -> TrainBatch:
    """TaskSamples -> processor batch with answers (labels) and region prompts."""
    inputs = processor(
        [s.instruction for s in samples],
        images=[[s.image] if s.image is not None else [] for s in samples],
        answers=[s.answer for s in samples],
        regions=[list(s.regions) for s in samples],
    )
    return TrainBatch(inputs=dict(inputs), samples=list(samples))


def model_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("input_ids", "attention_mask", "pixel_values", "region_masks", "region_image_index", "labels")
    return {k: inputs.get(k) for k in keys}


def route_targets(samples: Sequence[Any], route: str, index: torch.Tensor) -> tuple[list[int], list[Any]]:
    """Rows and RouteTargets aligned with a route's link-state groups (index (N, 2): row, position)."""
    rows = [int(r) for r in index[:, 0].tolist()]
    per_row = {r: [t for t in samples[r].targets if t.route == route] for r in set(rows)}
    targets = []
    for r in sorted(per_row):
        n_groups = rows.count(r)
        if n_groups != len(per_row[r]):
            raise ValueError(
                f"row {r}: the answer holds {n_groups} [{route}] groups but the sample has {len(per_row[r])} "
                f"{route} targets; each routing token needs exactly one RouteTarget"
            )
        targets += per_row[r]
    return rows, targets


def lm_loss_per_task(logits: torch.Tensor, labels: torch.Tensor, tasks: Sequence[str]) -> dict[str, float]:
    """Mean next-token CE of each task's rows (for logging)."""
    with torch.no_grad():
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=IGNORE_INDEX,
                             reduction="none")  # (B, T - 1)
        counts = (labels[:, 1:] != IGNORE_INDEX).sum(1).clamp(min=1)
        per_row = (ce.sum(1) / counts).tolist()
    out: dict[str, list[float]] = {}
    for task, v in zip(tasks, per_row, strict=True):
        out.setdefault(task, []).append(v)
    return {k: float(np.mean(v)) for k, v in out.items()}


def decoder_loss(system: SuperLinkSystem, route: str, states: torch.Tensor, rows: list[int], targets: list[Any],
                 images: Sequence[np.ndarray | None]) -> torch.Tensor:
    """Project one route's link states (N, Q, D) and run its decoder against the targets."""
    binding = system.binding(route)
    if binding.train_batch is None:
        raise ValueError(f"route {route!r} has no training path (its binding's train_batch is None)")
    decoder = system.decoder_for(route)
    batch, dec_targets = binding.train_batch(system.project(route, states), rows, targets, images, decoder)
    out = decoder(batch, dec_targets)
    if out.loss is None:
        raise RuntimeError(f"decoder {binding.decoder!r} returned no loss for route {route} although targets were given")
    return out.loss


def dense_targets(samples: Sequence[Any], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch dense labels of each input image, pooled to the vision tower's grid.

    Images are in processor order (one per sample that has one). Returns targets (N_img, grid * grid, L)
    (the fraction of each patch a label covers) and a (N_img,) bool mask of the images whose sample's scene
    provides `dense_labels()` (L = 0 when none does)."""
    maps = [getattr(s.scene, "dense_labels", None) if s.image is not None else None for s in samples]
    maps = [m for s, m in zip(samples, maps, strict=True) if s.image is not None]
    pooled, have = [], []
    for fn in maps:
        have.append(fn is not None)
        if fn is not None:
            labels = torch.from_numpy(np.ascontiguousarray(fn())).permute(2, 0, 1)  # (L, H, W)
            pooled.append(F.adaptive_avg_pool2d(labels[None], grid)[0].flatten(1).T)  # (P, L) row-major
    n_labels = pooled[0].shape[-1] if pooled else 0
    out = torch.zeros(len(maps), grid * grid, n_labels)
    if pooled:
        out[torch.tensor(have)] = torch.stack(pooled)
    return out, torch.tensor(have, dtype=torch.bool)


def dense_probe_loss(model: Any, features: torch.Tensor, samples: Sequence[Any]) -> torch.Tensor:
    """BCE of the model's dense probe on its projected patch features (N_img, P, D) against the pooled
    `scene.dense_labels()` of each image (mllm.config.DenseProbeConfig); images without labels add nothing
    (the probe still joins the graph, so every rank of a data-parallel run sees it used)."""
    grid = int(round(features.shape[1] ** 0.5))
    targets, have = dense_targets(samples, grid)
    logits = model.dense_probe(features)  # (N_img, P, L)
    if not have.any():
        return logits.sum() * 0.0
    if targets.shape[-1] != logits.shape[-1]:
        raise ValueError(
            f"the dense probe predicts {logits.shape[-1]} labels per patch but the data's scenes give "
            f"{targets.shape[-1]}; set model.dense_probe.labels to {targets.shape[-1]}"
        )
    have = have.to(logits.device)
    return F.binary_cross_entropy_with_logits(logits[have].float(), targets.to(logits.device)[have.cpu()])


def link_health(system: SuperLinkSystem, route: str, states: torch.Tensor, weighted: torch.Tensor) -> dict[str, float]:
    """How a route's link is doing, so a collapse shows while it happens.

    link/<ROUTE>/cos: mean pairwise cosine of the batch's projected link vectors (queries averaged; near 1 means
    every phrase reaches the decoder as the same vector). link/<ROUTE>/grad: norm of the weighted decoder loss's
    gradient on the LLM's link states, i.e. how hard this decoder pulls on the LLM.
    """
    out = {}
    with torch.no_grad():
        v = F.normalize(system.project(route, states).float().mean(1), dim=-1)  # (N, C)
        if len(v) > 1:
            sim = v @ v.T
            out[f"link/{route}/cos"] = float(sim[~torch.eye(len(v), dtype=torch.bool, device=v.device)].mean())
    if states.requires_grad:
        (grad,) = torch.autograd.grad(weighted, states, retain_graph=True, allow_unused=True)
        out[f"link/{route}/grad"] = 0.0 if grad is None else float(grad.float().norm())
    return out


def joint_loss(system: SuperLinkSystem, batch: TrainBatch, loss_weights: Mapping[str, float] | None = None,
               decoders: bool = True, health: bool = False, lm: bool = True) -> LossOutput:
    """LM loss + sum over the routes present of weight x decoder loss (weights default to 1.0).

    decoders=False: the LM loss alone (no decoder runs; link states are still computed but unused).
    lm=False: the LM loss stays in parts (for the log) but not in the total.
    health=True: also measure each route's link health (`link_health`; one extra backward through each decoder).
    A model with format queries adds parts["format"], the set loss of its native-detection rows
    (mllm.format_queries), weighted by model.format_queries.loss_weight, whatever `decoders` says.
    """
    weights = dict(loss_weights or {})
    unknown = set(weights) - set(system.table)
    if unknown:
        raise ValueError(f"loss weights for unknown routes {sorted(unknown)}; bound routes: {sorted(system.table)}")
    out = system.model(**model_inputs(batch.inputs))
    parts = {"lm": out.loss}
    total, stats = (out.loss if lm else out.loss.detach() * 0.0), {}
    for route, links in (out.link_states.items() if decoders else ()):
        rows, targets = route_targets(batch.samples, route, links.index)
        # An alias of the model's output: link_health differentiates w.r.t. it, so its extra backward stops
        # here and never reaches the model (an FSDP-sharded model would take it for a backward of its own).
        states = links.states.view_as(links.states)
        parts[route] = decoder_loss(system, route, states, rows, targets, batch.images)
        weighted = weights.get(route, 1.0) * parts[route]
        total = total + weighted
        if health:
            stats.update(link_health(system, route, states, weighted))
    probe = system.model.config.dense_probe
    if probe is not None and out.image_features is not None:
        parts["dense"] = dense_probe_loss(system.model, out.image_features, batch.samples)
        total = total + probe.weight * parts["dense"]
    fq = system.model.config.format_queries
    rows = [i for i, s in enumerate(batch.samples) if s.task in FORMAT_TASKS]
    if fq is not None and rows:  # output-format-as-query: set loss on the slots after each prompt
        parts["format"] = format_loss(system.model, batch.inputs, rows, [batch.samples[i].answer for i in rows])
        total = total + fq.loss_weight * parts["format"]
    tasks = [s.task for s in batch.samples]
    per_task = lm_loss_per_task(out.logits, batch.inputs["labels"], tasks)
    return LossOutput(total=total, parts=parts, lm_per_task=per_task, health=stats)
