"""Benchmark: native box answers decoded token by token against output-format-as-query parallel decoding.

    python bench/native_decoding.py --steps 400 --n 60 --json

Two models get the same budget from the same starting point: `--init` (default the shipped `shapes`
checkpoint) fine-tuned for `--steps` steps (same seed, same batches) on ShapesWorld native detection,

  autoregressive  LM loss on the answers, decoded token by token (format queries off);
  parallel        the same, plus model.format_queries (a new table of `--slots` slots) trained with the
                  Hungarian set loss (mllm.format_queries), decoded from the slots in one pass.

Both are then scored on the same `--n` val native-detection scenes through the real Pipeline, one request
at a time: LLM forward passes per image (calls of model.run_llm, prefill included), latency per image,
and native_det_ap (evaluation.suite.score_native). The parallel model is also scored token by token
(`parallel_model_autoregressive`), the same weights without the slots. Trained models are kept under
`--out` and reused unless `--retrain`. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluation.suite import Scored, eval_samples, score_native, to_request  # noqa: E402
from mllm.config import FormatQueryConfig  # noqa: E402
from mllm.modeling import SuperLinkModel  # noqa: E402
from router.loss import collate, joint_loss  # noqa: E402
from router.pipeline import Pipeline  # noqa: E402
from shapesworld.tasks import make_sample  # noqa: E402
from training.train import group_of  # noqa: E402

MODES = ("autoregressive", "parallel")


def with_format_queries(pipe: Pipeline, slots: int) -> None:
    """Give the pipeline's model a fresh format-query table (every other weight kept)."""
    old = pipe.system.model
    cfg = old.config.model_copy(update={"format_queries": FormatQueryConfig(slots=slots)}, deep=True)
    new = SuperLinkModel(cfg, old.tokenizer, llava=old.llava)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(not k.startswith("format_queries.") for k in missing):
        raise RuntimeError(f"unexpected weights when adding format queries: {missing=} {unexpected=}")
    pipe.system.model = new
    pipe.config = pipe.config.model_copy(update={"model": cfg}, deep=True)


def finetune(pipe: Pipeline, steps: int, batch_size: int, seed: int, lr: float,
             tasks: tuple[str, ...] = ("native_detection",), decoders: bool = False) -> dict:
    """`steps` AdamW steps on ShapesWorld `tasks` (drawn uniformly; batch k is a function of (seed, k)).

    The joint loss: LM, plus the set loss when the model has format slots, plus the decoder losses when
    `decoders` (then decoders and their projectors train too). Query tables and the optional v1 modules
    (format queries, image tokenizer; new, so they start from scratch) train at 4 x lr, the rest at lr."""
    system, cfg = pipe.system, pipe.config
    system.train()
    groups: dict[str, list] = {}
    for name, p in system.named_parameters():
        group = "new" if name.startswith(("model.format_queries.", "model.image_tokenizer.")) else group_of(name)
        p.requires_grad_(decoders or group != "decoders")
        groups.setdefault(group, []).append(p)
    rates = {"queries": 4 * lr, "new": 4 * lr, "projectors": lr, "llm": lr, "decoders": lr if decoders else 0.0,
             "region": 0.0}
    opt = torch.optim.AdamW([{"params": ps, "lr": rates[g]} for g, ps in groups.items() if rates.get(g)])
    bins, size = cfg.model.vocab.location_bins, cfg.training.image_size
    t0, log = time.perf_counter(), []
    for step in range(steps):
        rng = np.random.default_rng([seed, step])
        torch.manual_seed(seed * 1_000_003 + step)
        picks = rng.integers(len(tasks), size=batch_size) if len(tasks) > 1 else [0] * batch_size
        batch = collate(pipe.processor, [make_sample(tasks[int(k)], rng, size, bins) for k in picks])
        out = joint_loss(system, batch, decoders=decoders)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in system.parameters() if p.grad is not None], 1.0)
        opt.step()
        log.append({k: float(v.detach()) for k, v in out.parts.items()})
        if (step + 1) % 25 == 0:
            recent = {k: round(statistics.mean(d[k] for d in log[-25:] if k in d), 3) for k in log[-1]}
            print(f"step {step + 1}/{steps} {recent}", file=sys.stderr, flush=True)
    system.eval()
    keys = {k for d in log[-50:] for k in d}
    last = {k: round(statistics.mean(d[k] for d in log[-50:] if k in d), 4) for k in sorted(keys)}
    return {"steps": steps, "train_s": round(time.perf_counter() - t0, 1), "last_losses": last}


def trained(mode: str, args: argparse.Namespace) -> tuple[Pipeline, dict]:
    folder = Path(args.out) / mode
    if folder.is_dir() and not args.retrain:
        info = json.loads((folder / "bench_train.json").read_text())
        return Pipeline.from_pretrained(folder), info
    torch.manual_seed(args.seed)
    pipe = Pipeline.from_pretrained(args.init)
    if mode == "parallel":
        with_format_queries(pipe, args.slots)
    info = {"init": args.init, **finetune(pipe, args.steps, args.batch_size, args.seed, args.lr)}
    pipe.save_pretrained(folder)
    (folder / "bench_train.json").write_text(json.dumps(info))
    return pipe, info


def score(pipe: Pipeline, pairs: list, format_decoding: bool | None) -> dict:
    """Forward passes, latency and native AP over `pairs`, one request at a time."""
    model = pipe.system.model
    calls = []
    run_llm = model.run_llm
    model.run_llm = lambda *a, **k: calls.append(1) or run_llm(*a, **k)  # count every LLM forward pass
    pipe.format_decoding = format_decoding
    passes, latency, scored = [], [], []
    try:
        for i, (family, sample) in enumerate(pairs):
            calls.clear()
            t0 = time.perf_counter()
            response = pipe(to_request(family, sample, i))
            latency.append((time.perf_counter() - t0) * 1000)
            passes.append(len(calls))
            scored.append(Scored(family, sample, response))
    finally:
        del model.run_llm
        pipe.format_decoding = None
    ap = score_native(scored, pipe.config.model.vocab.location_bins)
    return {
        "forward_passes": round(statistics.mean(passes), 2),
        "latency_ms": round(statistics.mean(latency), 1),
        "latency_p50_ms": round(statistics.median(latency), 1),
        "native_det_ap": round(ap["ap"], 4) if ap else None,
        "native_det_ap50": round(ap["ap50"], 4) if ap and "ap50" in ap else None,
        "bad_outputs": sum(len(s.response.errors) for s in scored),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", default="shapes", help="preset or saved folder both models start from")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2.5e-4)
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=60, help="val native-detection scenes scored")
    ap.add_argument("--out", default="runs/native_decoding")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results, train = {}, {}
    for mode in MODES:
        pipe, train[mode] = trained(mode, args)
        pairs = eval_samples("val", args.n, 0, pipe.config.training.image_size,
                             pipe.config.model.vocab.location_bins, families=("native_detection",))
        results[mode] = score(pipe, pairs, None)
        if mode == "parallel":
            results["parallel_model_autoregressive"] = score(pipe, pairs, False)
        print(f"{mode}: {results[mode]}", file=sys.stderr, flush=True)
    ar, par = results["autoregressive"], results["parallel"]
    out = {
        **results,
        "pass_reduction": round(ar["forward_passes"] / par["forward_passes"], 2),
        "latency_speedup": round(ar["latency_ms"] / par["latency_ms"], 2),
        "ap_ratio": round(par["native_det_ap"] / ar["native_det_ap"], 3) if ar["native_det_ap"] else None,
        "train": train,
        "n": args.n,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
