"""Is VQA limited by the vision tower or by the language model? A VQA-only model given oracle vision.

    python bench/vqa_oracle_vision.py [--config configs/shapes.yaml] [--steps 3000] [--n 3600] [--json]

Trains the VQA language specialist of `bench/specialists.py` (the config's SuperLink model, no decoders,
VQA samples only, the LM-only stage's rates), except that its image tokens are not computed by the vision
tower: each image's tokens are a learned linear map of ShapesWorld's exact per-patch labels
(`Scene.dense_labels()` pooled to the patch grid: the coverage of each kind and colour, object centres).
Everything else (the LLM, the prompt, generation through the Pipeline, the scoring of `superlink eval` on
the same val questions) is unchanged. If this model answers well where the normal one stays at the
answer prior at the same steps, VQA's gap is the vision tower's; if it too stays at the prior, it is the
language model's (or its training). Prints `specialist.vqa_acc`; with --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

# bench/decoders.py would shadow the `decoders` package: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import training.specialists as specialists  # noqa: E402
from mllm.modeling import SuperLinkModel  # noqa: E402
from router.config import load_config  # noqa: E402
from router.loss import dense_targets  # noqa: E402
from router.system import build_system  # noqa: E402
from shapesworld.scene import DENSE_LABELS  # noqa: E402


class OracleVision:
    """Image tokens from exact labels, looked up by the pixel values the processor made of each image."""

    def __init__(self, processor, grid: int) -> None:
        self.processor, self.grid = processor, grid
        self.labels: dict[str, torch.Tensor] = {}

    @staticmethod
    def key(pixels: torch.Tensor) -> str:
        return hashlib.sha1(pixels.detach().contiguous().numpy().tobytes()).hexdigest()

    def register(self, samples) -> None:
        with_image = [s for s in samples if s.image is not None]
        if not with_image:
            return
        pixels, _ = self.processor.preprocess_images([s.image for s in with_image])
        targets, have = dense_targets(with_image, self.grid)
        for row, px, ok in zip(targets, pixels, have, strict=True):
            if ok:
                self.labels[self.key(px)] = row

    def encode_images(self, model: SuperLinkModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            labels = torch.stack([self.labels[self.key(px)] for px in pixel_values.float().cpu()])
        except KeyError as e:
            raise RuntimeError("an image reached the model whose labels were never registered") from e
        labels = labels.to(pixel_values.device, pixel_values.dtype)
        return labels, model.oracle(labels)  # (N, P, L) stands in for the patches; (N, P, D) image tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n", type=int, default=3600, help="total val scenes, as `superlink eval --n` (VQA gets 1/12)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    cfg = load_config(args.config)
    grid = cfg.model.vision.image_size // cfg.model.vision.patch_size
    _, processor = build_system(cfg, decoders=[])  # a processor like the specialist's, for the lookup keys
    oracle = OracleVision(processor, grid)

    def build_with_oracle(config, **kw):
        system, proc = build_system(config, **kw)
        system.model.oracle = nn.Linear(len(DENSE_LABELS), config.model.text.hidden_size)
        return system, proc

    def samples_registered(*a, **kw):
        samples = task_samples(*a, **kw)
        oracle.register(samples)
        return samples

    task_samples = specialists.task_samples
    specialists.build_system = build_with_oracle
    specialists.task_samples = samples_registered
    SuperLinkModel.encode_images = lambda self, pixel_values: oracle.encode_images(self, pixel_values)

    t0 = time.perf_counter()
    spec = specialists.train_language_specialist(cfg, "vqa", steps=args.steps, seed=args.seed,
                                                 log=lambda m: print(m, flush=True))
    pairs, _ = specialists.family_pairs(cfg, "vqa", "val", args.n, args.seed)
    oracle.register([s for _, s in pairs])
    scores = specialists.evaluate_language_specialist(spec, n=args.n, seed=args.seed)
    result = {"config": args.config, "steps": spec.steps, "train_s": spec.train_s,
              "loss_first50": round(float(np.mean(spec.losses[:50])), 4),
              "loss_last50": round(float(np.mean(spec.losses[-50:])), 4),
              "specialist.vqa_acc": scores.get("vqa_acc"), "scenes": len(pairs),
              "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"oracle-vision VQA specialist: vqa_acc {result['specialist.vqa_acc']} after {spec.steps} steps "
          f"({len(pairs)} val questions)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
