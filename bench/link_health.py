"""Link health of a saved model: per-route spread and pull of the super links on training batches.

    python bench/link_health.py [--model checkpoints/shapes] [--batches 4] [--batch-size 16] [--json]

For each perception and generation route: `link/<ROUTE>/cos`, the mean pairwise cosine of the projected
link vectors within a batch (near 1: every phrase or prompt reaches its decoder as the same vector, so the
decoder cannot tell requests apart), and `link/<ROUTE>/grad`, the norm of the weighted decoder loss's
gradient on the LLM's link states (how hard that decoder pulls on the LLM). The same figures appear in a
training run's log on every logged step (router.loss.link_health); this script reads them off a model.
With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# bench/decoders.py would shadow the `decoders` package: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from router.loss import collate, joint_loss  # noqa: E402
from router.system import load_system  # noqa: E402
from training.train import batch_samples  # noqa: E402

ROUTED_TASKS = ("detection", "segmentation", "grounding", "keypoints", "generation", "editing")


def measure(model: Path, batches: int, batch_size: int) -> dict[str, float]:
    cfg, system, processor = load_system(model)
    system.train()  # the decoders' training losses, as in a training step
    training = cfg.training.model_copy(update={"batch_size": batch_size, "task_weights": dict.fromkeys(ROUTED_TASKS, 1.0)})
    cfg = cfg.model_copy(update={"training": training})
    acc: dict[str, list[float]] = {}
    for k in range(batches):
        torch.manual_seed(k)
        batch = collate(processor, batch_samples(cfg, 1_000_000 + k, 0, 0))  # steps no schedule reaches
        for name, value in joint_loss(system, batch, cfg.training.loss_weights, health=True).health.items():
            acc.setdefault(name, []).append(value)
    return {name: round(float(np.mean(v)), 6 if "grad" in name else 4) for name, v in sorted(acc.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("checkpoints/shapes"))
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = measure(args.model, args.batches, args.batch_size)
    if not args.json:
        for name, value in result.items():
            print(f"{name:20s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
