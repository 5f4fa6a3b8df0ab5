"""Does the [GEN] decoder use its condition? Conditioning gain before and after teacher-conditioned training.

    python bench/gen_conditioning.py [--model checkpoints/shapes] [--steps 200] [--json]

`cond_gain` is the v-prediction MSE of the decoder given an empty prompt minus its MSE given the
description of the target ("red circle blue square") through the frozen text encoder, on 32 fixed val
generation samples with fixed noise and timesteps: 0 means the UNet draws the same whatever it is told.
The shipped decoder was trained end to end through links that collapsed (bench/link_health.py), so it
starts near 0; `--steps` of teacher-conditioned training (`decoder_conditioning: text`, the first stage of
the staged recipe) show whether the UNet learns to use a condition that carries the request.
With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# bench/decoders.py would shadow the `decoders` package: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from decoders.diffusion import DiffusionTargets, GenerationBatch, GenerationDecoder  # noqa: E402
from router.bindings import target_texts  # noqa: E402
from router.system import load_system  # noqa: E402
from shapesworld.tasks import make_sample  # noqa: E402


def samples(seed: int, n: int) -> list:
    rng = np.random.default_rng(seed)
    return [make_sample("generation", rng) for _ in range(n)]


def loss(decoder: GenerationDecoder, batch: list, texts: list[str], seed: int = 0) -> float:
    states = torch.zeros(len(batch), 1, decoder.link_dim)  # unused under text conditioning
    targets = DiffusionTargets([s.targets[0].image for s in batch], texts=texts)
    with torch.no_grad():
        return float(decoder(GenerationBatch(states), targets, generator=torch.Generator().manual_seed(seed)).loss)


def cond_gain(decoder: GenerationDecoder, val: list) -> float:
    decoder.eval()
    texts = target_texts([s.targets[0] for s in val])
    gain = loss(decoder, val, [""] * len(val)) - loss(decoder, val, texts)
    decoder.train()
    return gain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("checkpoints/shapes"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    _, system, _ = load_system(args.model, decoders=["generator"], with_model=False)
    decoder = system.decoders["generator"]
    decoder.conditioning = "text"
    val = samples(123_456, 32)
    before = cond_gain(decoder, val)
    opt = torch.optim.AdamW([p for p in decoder.unet.parameters() if p.requires_grad], lr=args.lr)
    start = time.time()
    for step in range(args.steps):
        batch = samples(step, args.batch)
        states = torch.zeros(len(batch), 1, decoder.link_dim)
        targets = DiffusionTargets([s.targets[0].image for s in batch], texts=target_texts([s.targets[0] for s in batch]))
        out = decoder(GenerationBatch(states), targets)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    result = {"steps": args.steps, "seconds": round(time.time() - start, 1),
              "cond_gain_before": round(before, 5), "cond_gain_after": round(cond_gain(decoder, val), 5)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
