"""Link-conditioning ablation for the [DET] detector: what the phrase vector must look like for it to learn.

    python bench/link_ablation.py --conditioning direct|relu_mlp|skip_mlp [--encoder-loss] [--calibration]
                                  [--steps 1500] [--eval-n 120] [--json]

The `shapes` detector is trained alone on ShapesWorld detection (batch 8, AdamW, reference phrases). A
phrase is a bag of word embeddings (one learned vector per colour and kind word, averaged), standing in
for the LLM: `direct` feeds that vector (at the detector width) straight in as the link vector;
`relu_mlp` and `skip_mlp` make it at the LLM width and pass it through a route projector
(router/bindings.py), as the LLM's link states are. Four link queries per phrase, as in `shapes`; each
gets its own small offset so the projector sees four different states, as it does behind the LLM.

Reports det AP / AP50 on the same val scenes as `superlink eval` uses for its detection family, and
`phrase_cos`: the mean pairwise cosine of the decoder-width phrase vectors of all 63 categories (a
collapse towards one direction reads near 1). With --json the last line is one JSON object.
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
from torch import nn  # noqa: E402

from decoders.detection import DetectionBatch, DetectionDecoder, DetectionTarget  # noqa: E402
from evaluation.coco import GtImage, build_coco_gt, coco_ap, coco_results  # noqa: E402
from evaluation.suite import eval_samples  # noqa: E402
from router.bindings import PROJECTORS  # noqa: E402
from router.config import load_config  # noqa: E402
from router.samples import TaskSample  # noqa: E402
from shapesworld.constants import COLORS, KINDS  # noqa: E402
from shapesworld.tasks import make_sample  # noqa: E402

WORDS = [*KINDS, *COLORS]
QUERIES = 4


class BagOfWords(nn.Module):
    """Phrase -> (Q, D): mean of its words' learned vectors, plus one learned offset per link query."""

    def __init__(self, dim: int):
        super().__init__()
        self.words = nn.Embedding(len(WORDS), dim)
        self.offsets = nn.Parameter(torch.randn(QUERIES, dim) * 0.1)

    def forward(self, phrase: str) -> torch.Tensor:
        ids = torch.tensor([WORDS.index(w) for w in phrase.split()])
        return self.words(ids).mean(0) + self.offsets  # (Q, D)


class Conditioning(nn.Module):
    def __init__(self, kind: str, llm_dim: int, link_dim: int):
        super().__init__()
        self.text = BagOfWords(link_dim if kind == "direct" else llm_dim)
        self.projector = nn.Identity() if kind == "direct" else PROJECTORS[kind](llm_dim, link_dim)

    def forward(self, phrases: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (B, P, Q, C) phrase link states, (B, P) mask."""
        p_max = max(len(p) for p in phrases)
        rows = []
        for names in phrases:
            states = [self.projector(self.text(n)) for n in names]
            states += [torch.zeros_like(states[0])] * (p_max - len(names))
            rows.append(torch.stack(states))
        mask = torch.tensor([[j < len(n) for j in range(p_max)] for n in phrases])
        return torch.stack(rows), mask

    @torch.no_grad()
    def phrase_cos(self) -> float:
        cats = [*KINDS, *(f"{c} {k}" for c in COLORS for k in KINDS)]
        v = torch.stack([self.projector(self.text(c)).mean(0) for c in cats])
        v = nn.functional.normalize(v, dim=-1)
        sim = v @ v.T
        return float(sim[~torch.eye(len(cats), dtype=torch.bool)].mean())


def batch_of(samples: list[TaskSample], cond: Conditioning, detector: DetectionDecoder):
    phrases = [[t.phrase for t in s.targets] for s in samples]
    states, mask = cond(phrases)
    batch = DetectionBatch.from_images([s.image for s in samples], states, mask, phrases, detector.config, task="det")
    targets = []
    for s in samples:
        boxes = np.concatenate([t.boxes for t in s.targets]).reshape(-1, 4).astype(np.float32)
        labels = [j for j, t in enumerate(s.targets) for _ in range(len(t.boxes))]
        targets.append(DetectionTarget(torch.from_numpy(boxes), torch.tensor(labels, dtype=torch.long)))
    return batch, targets


@torch.no_grad()
def evaluate(cond: Conditioning, detector: DetectionDecoder, n: int) -> dict[str, float]:
    """[DET] box AP on the val detection scenes of `superlink eval` (same seeds), reference phrases."""
    detector.eval()
    samples = [s for _, s in eval_samples("val", n, families=("detection",))]
    cats = sorted({t.phrase for s in samples for t in s.targets})
    gts, preds = [], []
    for i, s in enumerate(samples):
        batch, _ = batch_of([s], cond, detector)
        batch.score_threshold = 0.05
        dets = detector(batch).predictions[0]
        h, w = s.image.shape[:2]
        gts.append(GtImage(width=w, height=h, image_id=i + 1,
                           boxes=np.concatenate([t.boxes for t in s.targets]).reshape(-1, 4),
                           labels=[t.phrase for t in s.targets for _ in range(len(t.boxes))]))
        if dets:
            preds += coco_results(i + 1, np.asarray([d.box for d in dets], float), [d.score for d in dets],
                                  [d.phrase for d in dets], categories=cats)
    detector.train()
    ap = coco_ap(build_coco_gt(gts, cats), preds, "bbox")
    return {"det_ap": ap["ap"], "det_ap50": ap["ap50"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conditioning", choices=["direct", "relu_mlp", "skip_mlp"], default="relu_mlp")
    ap.add_argument("--encoder-loss", action="store_true")
    ap.add_argument("--calibration", action="store_true")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--eval-n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    cfg = load_config("shapes")
    det_cfg = cfg.decoders.detector.model_copy(
        update={"encoder_loss": args.encoder_loss, "logit_calibration": args.calibration})
    detector = DetectionDecoder(det_cfg)
    cond = Conditioning(args.conditioning, cfg.model.text.hidden_size, detector.link_dim)
    params = [*detector.parameters(), *cond.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    cos0 = cond.phrase_cos()
    rng = np.random.default_rng(args.seed)
    start, losses = time.time(), []
    for step in range(1, args.steps + 1):
        samples = [make_sample("detection", rng, cfg.training.image_size) for _ in range(args.batch)]
        batch, targets = batch_of(samples, cond, detector)
        loss = detector(batch, targets).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 and not args.json:
            print(f"step {step} loss {np.mean(losses[-100:]):.3f} ({time.time() - start:.0f} s)", flush=True)
    result = {
        "conditioning": args.conditioning, "encoder_loss": args.encoder_loss, "calibration": args.calibration,
        "steps": args.steps, "seconds": round(time.time() - start, 1), "final_loss": round(float(np.mean(losses[-100:])), 4),
        "phrase_cos_init": round(cos0, 3), "phrase_cos": round(cond.phrase_cos(), 3),
        **evaluate(cond, detector, args.eval_n),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
