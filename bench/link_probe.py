"""What a perception link carries: how much of a link vector is its phrase, and how much is everything else.

    python bench/link_probe.py [--model checkpoints/shapes] [--route DET] [--samples 600] [--json]

Teacher-forced on ShapesWorld training-distribution samples of the route's task (the answer the model is
trained to write), for every [ROUTE] group: the LLM's link states (the route's queries' last hidden
states, averaged over the queries) and the projected link vector the decoder receives (averaged likewise;
the detector uses that mean as the phrase's vector). Per kind of vector:

- `<kind>/phrase_r2`: the share of the vectors' variance explained by which phrase they belong to
  (between-phrase variance / total variance). A decoder conditioned straight on the phrase, like the
  specialists of bench/specialists.py, has 1.0: everything it gets says which phrase was asked for. What
  is left over varies with the image and the wording, and reaches the decoder as noise.
- `<kind>/probe_acc`: a linear probe (softmax regression) trained on a random half of the vectors to name the phrase
  and scored on the other half; `probe_acc_kind` / `probe_acc_colour` for the shape and colour words.
  High accuracy with low r2: the phrase is readable but buried in phrase-independent variance.

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

from router.loss import collate, model_inputs, route_targets  # noqa: E402
from router.system import load_system  # noqa: E402
from shapesworld.constants import COLORS, KINDS  # noqa: E402
from shapesworld.tasks import make_sample  # noqa: E402

TASK_OF = {"DET": "detection", "SEG": "segmentation", "GRD": "grounding", "POSE": "keypoints"}


def collect(model: Path, route: str, samples: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[str]]:
    cfg, system, processor = load_system(model)
    system.eval()
    rng = np.random.default_rng(seed)
    vectors: dict[str, list[torch.Tensor]] = {"states": [], "projected": []}
    phrases: list[str] = []
    with torch.no_grad():
        for start in range(0, samples, 16):
            rows = [make_sample(TASK_OF[route], rng, cfg.training.image_size, cfg.model.vocab.location_bins)
                    for _ in range(min(16, samples - start))]
            out = system.model(**model_inputs(collate(processor, rows).inputs))
            links = out.link_states.get(route)
            if links is None:
                continue
            _, targets = route_targets(rows, route, links.index)
            vectors["states"].append(links.states.float().mean(1))  # (N, D)
            vectors["projected"].append(system.projectors[route](links.states).float().mean(1))  # (N, C)
            phrases += [t.phrase.strip().lower() for t in targets]
    return {k: torch.cat(v) for k, v in vectors.items()}, phrases


def phrase_r2(x: torch.Tensor, labels: list[str]) -> float:
    """Between-phrase sum of squares / total sum of squares."""
    x = x - x.mean(0)
    total = float((x ** 2).sum())
    between = 0.0
    for p in set(labels):
        idx = [i for i, q in enumerate(labels) if q == p]
        between += len(idx) * float((x[idx].mean(0) ** 2).sum())
    return between / total if total > 0 else 0.0


def probe(x: torch.Tensor, labels: list[str], steps: int = 500) -> float:
    """Softmax regression on a random half of the vectors, accuracy on the other half (standardised inputs)."""
    names = sorted(set(labels))
    y = torch.tensor([names.index(p) for p in labels])
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    torch.manual_seed(0)
    order = torch.randperm(len(y))
    train, test = order[: len(y) // 2], order[len(y) // 2 :]
    head = torch.nn.Linear(x.shape[1], len(names))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        return float((head(x[test]).argmax(-1) == y[test]).float().mean())


def word_of(phrase: str, words) -> str:
    found = [w for w in words if w in phrase]
    return found[0] if found else "-"


def measure(model: Path, route: str, samples: int) -> dict[str, float]:
    vectors, phrases = collect(model, route, samples)
    kinds = [word_of(p, KINDS) for p in phrases]
    coloured = [i for i, p in enumerate(phrases) if word_of(p, COLORS) != "-"]  # e.g. "red circles", not "circles"
    colours = [word_of(phrases[i], COLORS) for i in coloured]
    out: dict[str, float] = {"route": route, "vectors": len(phrases), "phrases": len(set(phrases)),
                             "coloured": len(coloured), "chance_kind": round(majority(kinds), 4),
                             "chance_colour": round(majority(colours), 4) if colours else None}
    for name, x in vectors.items():
        out[f"{name}/phrase_r2"] = round(phrase_r2(x, phrases), 4)
        out[f"{name}/probe_acc"] = round(probe(x, phrases), 4)
        out[f"{name}/probe_acc_kind"] = round(probe(x, kinds), 4)
        out[f"{name}/probe_acc_colour"] = round(probe(x[coloured], colours), 4) if len(set(colours)) > 1 else None
    return out


def majority(labels: list[str]) -> float:
    """Accuracy of always naming the most frequent label."""
    return max(labels.count(v) for v in set(labels)) / len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("checkpoints/shapes"))
    ap.add_argument("--route", choices=sorted(TASK_OF), default="DET")
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = measure(args.model, args.route, args.samples)
    if not args.json:
        for name, value in result.items():
            print(f"{name:28s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
