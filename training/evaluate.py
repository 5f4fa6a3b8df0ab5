"""Periodic evaluation during training, on a few ShapesWorld val samples, with evaluation/ metrics.

  grd_acc50    teacher-forced [GRD]: the answer is fed, its link states go to the detector
  vqa_acc      greedy generation, exact match after normalisation
  routing_acc  greedy generation on routed tasks: emitted routes vs the answer's routes
  routing_acc_heldout_wording  the same on the same requests worded with the grammar's held-out part
"""

from __future__ import annotations

from typing import Any

import torch

from evaluation.metrics import grounding_acc50, routing_accuracy, vqa_accuracy
from mllm.generation import generate
from mllm.vocab import route_names_in
from router.bindings import SuperLinkSystem, detector_train_batch
from router.config import SuperLinkConfig
from router.loss import collate, model_inputs, route_targets
from shapesworld.tasks import ShapesWorldDataset

ROUTED_TASKS = ("detection", "segmentation", "grounding", "keypoints", "generation", "editing")


def val_samples(cfg: SuperLinkConfig, task: str, n: int, wording: str = "template") -> list[Any]:
    data = ShapesWorldDataset(
        "val", n, seed=cfg.training.seed, image_size=cfg.training.image_size,
        location_bins=cfg.model.vocab.location_bins, tasks=[task], wording=wording,
    )  # fmt: skip
    return [data[i] for i in range(n)]


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def grounding_accuracy(system: SuperLinkSystem, processor: Any, samples: list[Any], device: torch.device) -> float:
    batch = collate(processor, samples)
    out = system.model(**model_inputs(_to(batch.inputs, device)))
    links = out.link_states["GRD"]
    rows, targets = route_targets(batch.samples, "GRD", links.index)
    decoder = system.decoder_for("GRD")
    det_batch, _ = detector_train_batch(system.project("GRD", links.states), rows, targets, batch.images, decoder)
    predictions = decoder(det_batch).predictions  # one list per row, the top box first
    pred = [list(p[0].box) if p else None for p in predictions]
    return grounding_acc50(pred, [t.boxes[0].tolist() for t in targets])


def generated(system: SuperLinkSystem, processor: Any, samples: list[Any], device: torch.device, max_new: int) -> list[Any]:
    inputs = processor(
        [s.instruction for s in samples],
        images=[[s.image] if s.image is not None else [] for s in samples],
        regions=[list(s.regions) for s in samples],
    )
    return generate(system.model, _to(dict(inputs), device), max_new_tokens=max_new)


@torch.no_grad()
def evaluate(system: SuperLinkSystem, processor: Any, cfg: SuperLinkConfig, device: torch.device) -> dict[str, float]:
    was_training = system.training
    system.eval()
    n = cfg.training.eval_samples
    try:
        result = {"grd_acc50": grounding_accuracy(system, processor, val_samples(cfg, "grounding", n), device)}
        vqa = val_samples(cfg, "vqa", n)
        result["vqa_acc"] = vqa_accuracy([g.text for g in generated(system, processor, vqa, device, 8)],
                                         [s.answer for s in vqa])
        for wording, key in (("template", "routing_acc"), ("heldout", "routing_acc_heldout_wording")):
            routed = [s for t in ROUTED_TASKS for s in val_samples(cfg, t, max(1, n // len(ROUTED_TASKS)), wording)]
            gens = generated(system, processor, routed, device, 24)
            result[key] = routing_accuracy([[e.route for e in g.links] for g in gens],
                                           [route_names_in(s.answer) for s in routed])
    finally:
        system.train(was_training)
    return result
