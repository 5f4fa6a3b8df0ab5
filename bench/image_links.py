"""Do the [GEN] / [EDIT] links carry the request? The mapped link against the frozen text encoder's description.

    python bench/image_links.py [--model checkpoints/shapes] [--routes GEN,EDIT] [--samples 64] [--json]

The diffusion decoders' alignment loss (`align_weight`, VisionLLM v2's link alignment) pulls the mapped link
states of a [GEN] / [EDIT] request towards the frozen text encoder's embedding of the target's description
("red circle blue square"), the condition a teacher-conditioned UNet (`decoder_conditioning: text`) learns to
draw from. Teacher-forced on ShapesWorld training-distribution samples, per route:

- `<route>/rel_mse`: MSE of the mapped link to the description's embedding over the embedding's mean square
  (0 = aligned; about 1 = no better than predicting zeros);
- `<route>/cosine`: their mean cosine similarity (flattened prompt tokens);
- `<route>/retrieval`: how often the mapped link is nearer (L2) to its own description than to every other
  description in its batch of 16; chance is 1/16. A UNet trained on the descriptions can only draw what was
  asked if this is high.

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
import torch.nn.functional as F  # noqa: E402

from router.bindings import target_texts  # noqa: E402
from router.loss import collate, model_inputs, route_targets  # noqa: E402
from router.system import load_system  # noqa: E402
from shapesworld.tasks import make_sample  # noqa: E402

TASK_OF = {"GEN": "generation", "EDIT": "editing"}
BATCH = 16


def alignment(mapped: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """mapped, text (N, T, D), row i of each for the same request -> rel_mse, cosine and retrieval (row i's
    mapped link nearest to text i among the N; callers pass one batch at a time, so chance is 1/N)."""
    if mapped.shape != text.shape or mapped.dim() != 3:
        raise ValueError(f"expected two (N, T, D) tensors of one shape, got {tuple(mapped.shape)} and {tuple(text.shape)}")
    m, t = mapped.flatten(1).double(), text.flatten(1).double()
    nearest = torch.cdist(m, t).argmin(dim=1)
    return {
        "rel_mse": float(((m - t) ** 2).mean() / (t**2).mean().clamp_min(1e-12)),
        "cosine": float(F.cosine_similarity(m, t, dim=1).mean()),
        "retrieval": float((nearest == torch.arange(len(t))).double().mean()),
    }


def measure(model: Path, routes: list[str], samples: int, seed: int = 0) -> dict[str, float]:
    cfg, system, processor = load_system(model)
    system.eval()
    out: dict[str, float] = {}
    for route in routes:
        decoder = system.decoder_for(route)
        rng = np.random.default_rng([seed, list(TASK_OF).index(route)])
        parts: list[dict[str, float]] = []
        with torch.no_grad():
            for start in range(0, samples, BATCH):
                rows = [make_sample(TASK_OF[route], rng, cfg.training.image_size, cfg.model.vocab.location_bins)
                        for _ in range(min(BATCH, samples - start))]
                result = system.model(**model_inputs(collate(processor, rows).inputs))
                links = result.link_states.get(route)
                if links is None or len(links.index) < 2:
                    continue
                _, targets = route_targets(rows, route, links.index)
                mapped = decoder.mapper(system.project(route, links.states)).float()
                text = decoder.text_encoder(target_texts(targets)).to(mapped)
                parts.append(alignment(mapped, text))
        if not parts:
            raise SystemExit(f"{model}: no {route} link in {samples} {TASK_OF[route]} samples")
        for key in parts[0]:
            out[f"{route}/{key}"] = round(float(np.mean([p[key] for p in parts])), 4)
        out[f"{route}/chance_retrieval"] = round(1.0 / BATCH, 4)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("checkpoints/shapes"))
    ap.add_argument("--routes", default="GEN,EDIT", help="comma-separated: GEN, EDIT")
    ap.add_argument("--samples", type=int, default=64, help="samples per route (batches of 16)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    routes = [r.strip().upper() for r in args.routes.split(",") if r.strip()]
    bad = [r for r in routes if r not in TASK_OF]
    if bad or not routes:
        ap.error(f"--routes {args.routes!r}: accepted routes are {', '.join(TASK_OF)}")
    if args.samples < 2:
        ap.error("--samples must be at least 2")
    torch.manual_seed(0)
    result = {"model": str(args.model), "samples": args.samples, **measure(args.model, routes, args.samples)}
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
