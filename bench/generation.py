"""Benchmark: batched routed generation against running the same rows one by one.

    python bench/generation.py --preset tiny [--json]

For B = 1, 4, 16 distinct prompts (each with one image), generate `--max-new-tokens`
tokens with the KV cache, once as one batch and once row by row, and check the
outputs agree (same tokens, link states within 1e-4). A random-weight model rarely
picks a routing token, so a fixed logit bias on the routing tokens (and a ban on
eos, so every row runs the full length) makes rows fire routes at different steps,
exercising the routing -> queries path. Prints a table; with --json the last line
is one JSON object (batch, speedup_vs_sequential, batched_equals_sequential, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

if not __package__:  # run as a script: import from the repository root, not bench/ (bench/decoders.py)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched: the model is built from the preset

import torch  # noqa: E402

from mllm.generation import generate  # noqa: E402
from mllm.modeling import SuperLinkModel  # noqa: E402
from mllm.tokenizer import build_tokenizer  # noqa: E402
from mllm.types import Generation  # noqa: E402
from mllm.vocab import Vocabulary  # noqa: E402
from router.config import load_config  # noqa: E402

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "pentagon"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
VERBS = [
    "detect the",
    "segment every",
    "where is the",
    "draw a",
    "find all",
    "edit: make the",
    "point at the",
]


@dataclass
class Row:
    batch: int
    batched_s: float
    sequential_s: float
    speedup: float
    tokens_per_s: float
    link_events: int
    rows_with_links: int
    routes: dict[str, int]
    equal: bool


def prompts(n: int) -> list[str]:
    """n distinct instructions of different lengths."""
    out = []
    for i in range(n):
        extra = " and the " + COLOURS[(i + 3) % 8] + " " + SHAPES[(i + 5) % 8] if i % 3 == 0 else ""
        out.append(f"{VERBS[i % len(VERBS)]} {COLOURS[i % 8]} {SHAPES[(i * 3) % 8]}{extra}")
    return out


def build(preset: str, seed: int) -> SuperLinkModel:
    cfg = load_config(preset).model
    corpus = [f"{v} {c} {s}" for v in VERBS for c in COLOURS for s in SHAPES]
    tok = build_tokenizer(corpus, Vocabulary.from_config(cfg), cfg.text.tokenizer_vocab_size)
    torch.manual_seed(seed)
    return SuperLinkModel(cfg, tok).eval()


def make_batch(model: SuperLinkModel, texts: list[str], seed: int) -> dict:
    image = "<image>" * model.config.num_image_tokens
    batch = dict(model.tokenizer([image + " " + t for t in texts], return_tensors="pt", padding=True))
    side = model.config.vision.image_size
    g = torch.Generator().manual_seed(seed)
    batch["pixel_values"] = torch.randn(len(texts), 3, side, side, generator=g)
    return batch


def route_bias(model: SuperLinkModel, bias: float) -> torch.Tensor:
    """(V,) fixed bias: routing tokens up, eos banned."""
    ids = model.token_ids
    b = torch.zeros(model.llava.get_output_embeddings().weight.shape[0])
    b[list(ids.route.values())] = bias
    b[ids.eos] = float("-inf")
    return b


def same(a: Generation, b: Generation, atol: float = 1e-4) -> bool:
    if a.token_ids != b.token_ids or [(e.route, e.position) for e in a.links] != [
        (e.route, e.position) for e in b.links
    ]:
        return False
    return all(torch.allclose(x.states, y.states, atol=atol) for x, y in zip(a.links, b.links, strict=True))


def timed(fn, repeats: int):  # noqa: ANN001, ANN202
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_batch(model: SuperLinkModel, n: int, args: argparse.Namespace, bias: torch.Tensor) -> Row:
    texts = prompts(n)
    batch = make_batch(model, texts, args.seed)
    hook = lambda step, logits: logits + bias  # noqa: E731
    opts = {"max_new_tokens": args.max_new_tokens, "logits_hook": hook}
    singles = [{k: v[r : r + 1] for k, v in batch.items()} for r in range(n)]
    run_batched = lambda: generate(model, batch, **opts)  # noqa: E731
    run_rows = lambda: [generate(model, s, **opts)[0] for s in singles]  # noqa: E731
    run_batched(), run_rows()  # warm-up
    t_batched, together = timed(run_batched, args.repeats)
    t_rows, alone = timed(run_rows, args.repeats)
    tokens = sum(len(g.token_ids) for g in together)
    return Row(
        batch=n,
        batched_s=round(t_batched, 4),
        sequential_s=round(t_rows, 4),
        speedup=round(t_rows / t_batched, 2),
        tokens_per_s=round(tokens / t_batched, 1),
        link_events=sum(len(g.links) for g in together),
        rows_with_links=sum(bool(g.links) for g in together),
        routes=dict(sorted(Counter(e.route for g in together for e in g.links).items())),
        equal=all(same(a, b) for a, b in zip(together, alone, strict=True)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--route-bias", type=float, default=0.15, help="logit bias on routing tokens")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per measurement; the median is reported"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 suits a tiny model best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.preset, args.seed)
    bias = route_bias(model, args.route_bias)
    rows = [bench_batch(model, n, args, bias) for n in args.batches]
    header = f"{'B':>4} {'batched s':>10} {'one-by-one s':>13} {'speedup':>8} {'tok/s':>8} {'links':>6} {'rows':>5}"
    print(header + f" {'equal':>6}  routes")
    for r in rows:
        print(f"{r.batch:>4} {r.batched_s:>10.3f} {r.sequential_s:>13.3f} {r.speedup:>8.2f} {r.tokens_per_s:>8.1f} "
              f"{r.link_events:>6} {r.rows_with_links:>5} {str(r.equal):>6}  {r.routes}")  # fmt: skip
    if args.json:
        last = rows[-1]
        summary = {
            "preset": args.preset,
            "batch": last.batch,
            "speedup_vs_sequential": last.speedup,
            "batched_equals_sequential": all(r.equal for r in rows),
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "rows": [asdict(r) for r in rows],
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
