"""Does the LLM read the image? Image-token health and how much the answers depend on the picture.

    python bench/image_reliance.py [--model checkpoints/shapes] [--rows 16] [--json]

On ShapesWorld training-distribution samples of the image-conditioned language tasks (VQA, caption, native
boxes), teacher-forced:

- `lm/<task>`, `lm_rolled/<task>`, `lm_zeros/<task>`: the LM loss per answer token with each row's own
  image, with the images of the batch rotated by one row (every row sees another scene), and with
  all-zero pixels. A model that reads the picture loses much more on the wrong picture than its own;
  `reliance/<task>` is (rolled - own) / own.
- `image_token_norm` vs `text_embedding_norm`: the mean norm of the projected image tokens and of the
  LLM's token embeddings; `image_token_cos`: the mean pairwise cosine of one image's tokens (near 1: the
  LLM sees 64 copies of one vector).
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

from router.loss import collate, lm_loss_per_task, model_inputs  # noqa: E402
from router.system import load_system  # noqa: E402
from shapesworld.tasks import make_sample  # noqa: E402

TASKS = ("vqa", "caption", "native_detection")


def measure(model: Path, rows: int, seed: int = 0) -> dict[str, float]:
    cfg, system, processor = load_system(model)
    system.eval()
    rng = np.random.default_rng(seed)
    samples = [make_sample(t, rng, cfg.training.image_size, cfg.model.vocab.location_bins) for t in TASKS
               for _ in range(rows)]
    inputs = model_inputs(collate(processor, samples).inputs)
    tasks = [s.task for s in samples]
    pixels = inputs["pixel_values"]
    variants = {"lm": pixels, "lm_rolled": pixels.roll(1, dims=0), "lm_zeros": torch.zeros_like(pixels)}
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, pv in variants.items():
            res = system.model(**{**inputs, "pixel_values": pv})
            out.update({f"{name}/{t}": round(v, 4) for t, v in lm_loss_per_task(res.logits, inputs["labels"], tasks).items()})
            if name == "lm":
                feats = res.image_features.float()  # (N_img, P, D)
        unit = F.normalize(feats, dim=-1)
        out["image_token_norm"] = round(float(feats.norm(dim=-1).mean()), 3)
        out["image_token_cos"] = round(float((unit @ unit.transpose(1, 2)).mean()), 4)
        out["text_embedding_norm"] = round(float(system.model.llava.get_input_embeddings().weight.norm(dim=-1).mean()), 3)
    for t in TASKS:
        out[f"reliance/{t}"] = round((out[f"lm_rolled/{t}"] - out[f"lm/{t}"]) / out[f"lm/{t}"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("checkpoints/shapes"))
    ap.add_argument("--rows", type=int, default=16, help="samples per task")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    result = measure(args.model, args.rows)
    for k, v in result.items():
        print(f"{k:28s} {v}")
    if args.json:
        print(json.dumps({"model": str(args.model), **result}))


if __name__ == "__main__":
    main()
