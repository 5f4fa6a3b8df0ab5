"""Specialist ceilings: each task trained alone for the same CPU budget, against the shipped generalist.

    python bench/specialists.py [--budget-cpu-min 3 | --budget-min 6 | --steps 500] [--n 500] [--only DET,vqa] [--json]
    python bench/specialists.py --merge A.json B.json ... --json     # combine runs saved with --save

The budget is per specialist: CPU minutes of this process (the default; at OMP_NUM_THREADS=1 the work
one core does, whatever else the machine runs), wall minutes, or steps. Shards of one comparison can
run as separate processes (--only ... --save X.json) and be combined with --merge.

Decoder families (DET SEG GRD POSE GEN EDIT): the decoder of the config's `decoders:` section trained
alone on its ShapesWorld task, conditioned on the reference phrase (the prompt for GEN / EDIT) through
learned word embeddings, no LLM (`training.specialists.PhraseEncoder`). Same loss as the generalist's
decoder loss, AdamW, the config's batch size. Language tasks (vqa, caption, native_detection): the
config's SuperLink model trained on that task alone with the LM loss.

Every specialist is scored by `evaluation.suite` on the same val scenes as
`superlink eval --model MODEL --n N`, which scores the generalist. Printed per target metric:
specialist.<m>, generalist.<m> and ratio.<m> = generalist / specialist. With --json the last line is
one JSON object holding those keys plus steps.<name> and train_s.<name>.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: import from the repository root, not bench/ (bench/decoders.py)
    root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [root] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from router.config import load_config, with_overrides  # noqa: E402
from training.specialists import (  # noqa: E402
    DECODER_TASKS,
    LANGUAGE_TASKS,
    METRICS,
    TARGET_METRICS,
    evaluate_specialist,
    ratios,
    train_specialist,
)

NAMES: tuple[str, ...] = tuple(DECODER_TASKS) + LANGUAGE_TASKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/shapes.yaml", help="preset name or YAML whose model/decoders train")
    p.add_argument("--model", default="shapes", help="generalist to compare against (preset or saved folder)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-cpu-min", type=float, default=None,
                        help="CPU minutes (this process) of training per specialist (default 3)")
    budget.add_argument("--budget-min", type=float, default=None, help="wall minutes of training per specialist")
    budget.add_argument("--steps", type=int, default=None, help="training steps per specialist")
    p.add_argument("--n", type=int, default=500, help="total val scenes, as `superlink eval --n`")
    p.add_argument("--split", default="val")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    p.add_argument("--encoder", choices=("mean", "attn"), default=None,
                   help="phrase encoder of every decoder specialist (default: mean for DET/SEG/POSE, attn otherwise)")
    p.add_argument("--generalist-json", default=None,
                   help="reuse a `superlink eval --json` result (same --n/--split) instead of evaluating --model")
    p.add_argument("--no-generalist", action="store_true", help="skip the generalist (ratios are null)")
    p.add_argument("--guidance", default="", metavar="G,G",
                   help="GEN / EDIT: also score at these classifier-free guidance scales "
                        "(specialist.<metric>@guidance<G>; the plain key is the config's default_guidance)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted key, YAML value; repeatable), e.g. "
                        "--set 'decoders.generator.block_out_channels=[64, 128]'")
    p.add_argument("--decoder-lr", type=float, default=None,
                   help="AdamW rate of the decoder specialists' decoders (default 6e-4, the joint stage's)")
    p.add_argument("--save", default=None, help="write the running results here (JSON) after each specialist")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="combine results saved by --save (no training); later files win on shared keys")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.budget_min is None and args.steps is None and args.budget_cpu_min is None:
        args.budget_cpu_min = 3.0
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    names = [s.upper() if s.upper() in DECODER_TASKS else s for s in names]
    unknown = [s for s in names if s not in NAMES]
    if unknown or not names:
        p.error(f"unknown specialist(s) {unknown}; accepted: {', '.join(NAMES)}")
    args.names = names
    try:
        args.guidance_scales = [float(g) for g in args.guidance.split(",") if g.strip()]
    except ValueError:
        p.error(f"--guidance {args.guidance!r}: expected comma-separated numbers >= 1, e.g. 1,2")
    if any(not g >= 1.0 for g in args.guidance_scales):
        p.error(f"--guidance {args.guidance!r}: every scale must be >= 1 (1 turns guidance off)")
    return args


def generalist_metrics(args: argparse.Namespace) -> dict[str, Any]:
    if args.no_generalist:
        return {}
    if args.generalist_json:
        lines = [ln for ln in Path(args.generalist_json).read_text().splitlines() if ln.strip().startswith("{")]
        result = json.loads(lines[-1])
        if result.get("n") != args.n:
            raise SystemExit(f"{args.generalist_json} holds n={result.get('n')}, but --n is {args.n}")
        return result
    from evaluation.suite import evaluate_model

    return evaluate_model(args.model, split=args.split, n=args.n, seed=args.seed)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def table(summary: dict[str, Any]) -> str:
    rows = ["| specialist | metric | specialist | generalist | ratio (gen/spec) | steps | train CPU s | train wall s |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    for name, metrics in METRICS.items():
        for m in metrics:
            if f"specialist.{m}" not in summary:
                continue
            rows.append(f"| {name} | {m} | {fmt(summary[f'specialist.{m}'])} | {fmt(summary.get(f'generalist.{m}'))} "
                        f"| {fmt(summary.get(f'ratio.{m}'))} | {summary[f'steps.{name}']} | {fmt(summary.get(f'train_cpu_s.{name}'))} "
                        f"| {summary[f'train_s.{name}']} |")
    return "\n".join(rows)


def finish(summary: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Ratios over every specialist in `summary`, then the table and (with --json) the JSON line."""
    special = {k.split(".", 1)[1]: v for k, v in summary.items() if k.startswith("specialist.")}
    general = {k.split(".", 1)[1]: v for k, v in summary.items() if k.startswith("generalist.")}
    summary.update({f"ratio.{m}": r for m, r in ratios(special, general).items() if m in special})
    print(table(summary))
    if args.json:
        print(json.dumps(summary))
    return summary


def merge(paths: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for path in paths:
        part = json.loads(Path(path).read_text())
        if summary and part.get("n") != summary.get("n"):
            raise SystemExit(f"{path} was scored at n={part.get('n')}, the others at n={summary.get('n')}")
        summary.update({k: v for k, v in part.items() if v is not None or k not in summary})
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge:
        return finish(merge(args.merge), args)
    torch.set_num_threads(args.threads)
    try:
        cfg = with_overrides(load_config(args.config), args.overrides)
    except ValueError as e:  # pydantic's ValidationError is one too
        raise SystemExit(f"--set: {e}") from None
    if args.budget_cpu_min is not None:
        budget_s, clock, what = 60.0 * args.budget_cpu_min, "cpu", f"{args.budget_cpu_min:g} CPU min"
    elif args.budget_min is not None:
        budget_s, clock, what = 60.0 * args.budget_min, "wall", f"{args.budget_min:g} wall min"
    else:
        budget_s, clock, what = None, "wall", f"{args.steps} steps"
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"config": args.config, "model": args.model, "n": args.n, "split": args.split,
                               "budget": what, "threads": args.threads, "overrides": args.overrides,
                               "decoder_lr": args.decoder_lr}
    if not args.no_generalist:
        log(f"generalist {args.model} at n={args.n}")
        general = generalist_metrics(args)
        summary.update({f"generalist.{m}": general.get(m) for m in TARGET_METRICS})
        if args.save:
            Path(args.save).write_text(json.dumps(summary, indent=1))
    for name in args.names:
        log(f"training {name} ({what})")
        extra = {"lr": args.decoder_lr} if args.decoder_lr is not None and name in DECODER_TASKS else {}
        spec = train_specialist(cfg, name, budget_s=budget_s, steps=args.steps, seed=args.seed, encoder=args.encoder,
                                log=log, clock=clock, **extra)
        scores = evaluate_specialist(spec, split=args.split, n=args.n, seed=args.seed)
        tail = spec.losses[-50:]
        log(f"{name}: {spec.steps} steps, last-50 loss {sum(tail) / max(len(tail), 1):.4f}, {scores}")
        summary[f"steps.{name}"], summary[f"train_s.{name}"] = spec.steps, spec.train_s
        summary[f"train_cpu_s.{name}"], summary[f"scenes.{name}"] = spec.train_cpu_s, scores["scenes"]
        summary[f"loss_first50.{name}"] = round(sum(spec.losses[:50]) / max(len(spec.losses[:50]), 1), 4)
        summary[f"loss_last50.{name}"] = round(sum(tail) / max(len(tail), 1), 4)
        for m in spec.metrics:
            summary[f"specialist.{m}"] = scores[m]
        for g in args.guidance_scales if name in ("GEN", "EDIT") else ():
            decoder = spec.system.decoder_for(name)
            default = decoder.config.default_guidance
            decoder.config.default_guidance = g
            try:
                extra = evaluate_specialist(spec, split=args.split, n=args.n, seed=args.seed)
            finally:
                decoder.config.default_guidance = default
            log(f"{name} at guidance {g:g}: {extra}")
            for m in spec.metrics:
                summary[f"specialist.{m}@guidance{g:g}"] = extra[m]
        del spec
        if args.save:
            Path(args.save).write_text(json.dumps(summary, indent=1))
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.save:
        Path(args.save).write_text(json.dumps(summary, indent=1))
    return finish(summary, args)


if __name__ == "__main__":
    main()

__all__ = ["main", "parse_args", "TARGET_METRICS"]
