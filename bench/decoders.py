"""Decoder benchmark: per route, inference latency at batch 1 and 8 and a short overfit run.

    python bench/decoders.py --preset tiny [--json] [--steps 30] [--device cpu] [--threads 1]

Every decoder is built from the preset with random weights and fed random link states
(already at its link_dim, as the route's projector would deliver them). The perception
routes get simple synthetic scenes (coloured rectangles with exact boxes, masks and corner
keypoints); generation and editing get random target images and a fixed noise/timestep
seed, so the overfit losses are comparable from step to step.

Per route: latency_ms_b1 / latency_ms_b8 (median inference time, eval mode, no grad),
loss_drop = 1 - final / initial loss on one fixed batch after `--steps` AdamW steps, and
link_grad_nonzero (the first backward leaves a finite, non-zero gradient on the link states).
With --json the last stdout line is {"decoders": {route: {...}, ...}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This script shares its name with the `decoders` package; drop its own folder from the
# import path so `import decoders...` finds the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from decoders.detection import DetectionBatch, DetectionDecoder, DetectionTarget  # noqa: E402
from decoders.diffusion import DiffusionTargets, EditBatch, EditDecoder, GenerationBatch, GenerationDecoder  # noqa: E402
from decoders.keypoints import KeypointDecoder, PoseBatch, PoseTarget  # noqa: E402
from router.config import SuperLinkConfig, load_config  # noqa: E402

ROUTES: tuple[str, ...] = ("DET", "SEG", "GRD", "POSE", "GEN", "EDIT")
SCENE_SIZE = 64
TRAIN_BATCH = 2
# Two fixed scenes: per scene a list of (phrase index, xyxy box, colour).
SCENES: list[list[tuple[int, tuple[int, int, int, int], tuple[int, int, int]]]] = [
    [(0, (6, 8, 30, 28), (220, 40, 40)), (1, (34, 30, 58, 58), (40, 80, 220))],
    [(1, (10, 20, 50, 44), (40, 80, 220))],
]
PHRASES = ["red box", "blue box"]


@dataclass
class Case:
    """One route ready to run: the decoder, batches, and its loss on the fixed training batch."""

    decoder: nn.Module
    infer_batch: Callable[[int], Any]  # batch size -> inference batch
    loss: Callable[[], torch.Tensor]  # loss on the fixed training batch (same noise every call)
    link_states: torch.Tensor  # the training batch's link states (leaf, requires grad)


# ---- synthetic perception scenes -------------------------------------------------------------


def scene_image(k: int) -> np.ndarray:
    img = np.full((SCENE_SIZE, SCENE_SIZE, 3), 245, np.uint8)
    for _, (x1, y1, x2, y2), colour in SCENES[k % len(SCENES)]:
        img[y1:y2, x1:x2] = colour
    return img


def scene_target(k: int, task: str, num_keypoints: int) -> DetectionTarget:
    objs = SCENES[k % len(SCENES)]
    if task == "grd":  # grounding: the one phrase refers to the first object
        objs = [(0, objs[0][1], objs[0][2])]
    boxes = torch.tensor([o[1] for o in objs], dtype=torch.float32)  # (n, 4) xyxy
    labels = torch.tensor([o[0] for o in objs])
    masks = torch.zeros(len(objs), SCENE_SIZE, SCENE_SIZE, dtype=torch.bool)
    for i, (_, (x1, y1, x2, y2), _) in enumerate(objs):
        masks[i, y1:y2, x1:x2] = True
    if task == "pose":
        kp = torch.zeros(len(objs), num_keypoints, 3)  # corners visible, other slots unused
        for i, (_, (x1, y1, x2, y2), _) in enumerate(objs):
            corners = torch.tensor([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=torch.float32)
            n = min(4, num_keypoints)
            kp[i, :n, :2], kp[i, :n, 2] = corners[:n], 2.0
        return PoseTarget(boxes, labels, keypoints=kp)
    return DetectionTarget(boxes, labels, masks if task == "seg" else None)


def perception_batch(decoder, task: str, n: int, queries: int, seed: int, grad: bool = False):
    """n scenes with 2 phrases each (1 for grounding) and random link states (B, P, Q, C)."""
    phrases = PHRASES[:1] if task == "grd" else PHRASES
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, len(phrases), queries, decoder.link_dim, generator=g).requires_grad_(grad)
    mask = torch.ones(n, len(phrases), dtype=torch.bool)
    images = [scene_image(k) for k in range(n)]
    cls = PoseBatch if task == "pose" else DetectionBatch
    options = {} if task == "pose" else {"task": task}
    cfg = decoder.detector.config if task == "pose" else decoder.config
    return cls.from_images(images, states, mask, [list(phrases) for _ in range(n)], cfg, **options)


def perception_case(route: str, cfg: SuperLinkConfig, device: torch.device) -> Case:
    task = route.lower() if route != "POSE" else "pose"
    if route == "POSE":
        decoder = KeypointDecoder.build(cfg.decoders.keypoints, cfg.decoders.detector)
    else:
        decoder = DetectionDecoder(cfg.decoders.detector)
    decoder = decoder.to(device)
    queries = cfg.model.routes[route]
    batch = to_device(perception_batch(decoder, task, TRAIN_BATCH, queries, seed=0, grad=True), device)
    targets = [scene_target(k, task, cfg.decoders.keypoints.num_keypoints) for k in range(TRAIN_BATCH)]
    return Case(
        decoder=decoder,
        infer_batch=lambda n: to_device(perception_batch(decoder, task, n, queries, seed=1), device),
        loss=lambda: decoder(batch, targets).loss,
        link_states=batch.phrase_states,
    )


def to_device(batch, device: torch.device):
    batch.pixel_values = batch.pixel_values.to(device)
    leaf = batch.phrase_states.to(device).detach().requires_grad_(batch.phrase_states.requires_grad)
    batch.phrase_states, batch.phrase_mask = leaf, batch.phrase_mask.to(device)
    return batch


# ---- diffusion -------------------------------------------------------------------------------


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)  # (B, S, S, 3)


def diffusion_case(route: str, cfg: SuperLinkConfig, device: torch.device) -> Case:
    dcfg = cfg.decoders.generator if route == "GEN" else cfg.decoders.editor
    decoder = (GenerationDecoder(dcfg) if route == "GEN" else EditDecoder(dcfg)).to(device)
    queries, size = cfg.model.routes[route], dcfg.image_size

    def make(n: int, seed: int, grad: bool = False):
        g = torch.Generator().manual_seed(seed)
        states = torch.randn(n, queries, decoder.link_dim, generator=g).to(device).requires_grad_(grad)
        seeds = list(range(n))
        if route == "GEN":
            return GenerationBatch(states, seeds=seeds)
        return EditBatch(states, seeds=seeds, source_images=list(random_images(n, size, seed + 100)))

    batch = make(TRAIN_BATCH, 0, grad=True)
    targets = DiffusionTargets(random_images(TRAIN_BATCH, size, 7))
    return Case(
        decoder=decoder,
        infer_batch=lambda n: make(n, 1),
        loss=lambda: decoder(batch, targets, generator=torch.Generator().manual_seed(0)).loss,
        link_states=batch.link_states,
    )


# ---- measurements ----------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(case: Case, batch_size: int, repeats: int, device: torch.device) -> float:
    case.decoder.eval()
    batch = case.infer_batch(batch_size)
    case.decoder(batch)  # warm-up: lazy kernels, allocator
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        case.decoder(batch)
        sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def overfit(case: Case, steps: int, lr: float) -> tuple[float, bool, float, float]:
    """(loss_drop, link_grad_nonzero, initial, final) after `steps` AdamW steps on the fixed batch."""
    case.decoder.train()
    opt = torch.optim.AdamW([p for p in case.decoder.parameters() if p.requires_grad], lr=lr)
    initial, grad_ok = float("nan"), False
    for step in range(steps):
        loss = case.loss()
        opt.zero_grad()
        case.link_states.grad = None
        loss.backward()
        if step == 0:
            initial, g = loss.item(), case.link_states.grad
            grad_ok = bool(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0)
        opt.step()
    with torch.no_grad():
        final = case.loss().item()
    return 1.0 - final / initial, grad_ok, initial, final


def bench_route(
    route: str, cfg: SuperLinkConfig, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    torch.manual_seed(0)
    build = diffusion_case if route in ("GEN", "EDIT") else perception_case
    case = build(route, cfg, device)
    drop, grad_ok, initial, final = overfit(case, args.steps, args.lr)
    return {
        "loss_drop": round(drop, 4),
        "link_grad_nonzero": grad_ok,
        "latency_ms_b1": round(latency_ms(case, 1, args.repeats, device), 2),
        "latency_ms_b8": round(latency_ms(case, 8, args.repeats, device), 2),
        "initial_loss": round(initial, 4),
        "final_loss": round(final, 4),
        "overfit_steps": args.steps,
        "params": sum(p.numel() for p in case.decoder.parameters()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="preset name in configs/ or a YAML path")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset of routes")
    p.add_argument("--steps", type=int, default=50, help="overfit steps per route")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=3, help="timed inference runs per batch size (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # Tiny models gain nothing from intra-op threads, and on a shared CPU they lose a lot; raise for big presets.
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, device = load_config(args.preset), torch.device(args.device)
    routes = [r.strip().upper() for r in args.routes.split(",") if r.strip()]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise SystemExit(f"unknown route(s) {unknown}; accepted: {', '.join(ROUTES)}")
    results = {}
    for route in routes:
        t0 = time.perf_counter()
        results[route] = bench_route(route, cfg, args, device)
        r = results[route]
        print(
            f"{route:5s} loss_drop={r['loss_drop']:.3f} grad={r['link_grad_nonzero']} "
            f"b1={r['latency_ms_b1']:.1f}ms b8={r['latency_ms_b8']:.1f}ms ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
    summary = {"decoders": results}
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
