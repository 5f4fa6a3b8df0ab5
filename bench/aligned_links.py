"""Teacher decoders, then links aligned to them (VisionLLM v2's staged recipe), measured on the perception routes.

    python bench/aligned_links.py teacher --routes DET,SEG,GRD [--budget-cpu-min 20 | --steps N] [--init DIR] --out DIR [--json]
    python bench/aligned_links.py align --model shapes --teacher DIR [--teacher DIR2] [--steps 600]
                                      [--train-llm] [--scenes 200] [--export OUT] [--json]
    python bench/aligned_links.py anchor --model DIR --reference shapes [--routes DET,SEG,GRD,POSE] [--steps 2000]
                                       [--scenes 200] [--export OUT] [--json]
    python bench/aligned_links.py align-images --model shapes [--routes GEN,EDIT] [--steps 600] [--train-llm]
                                             [--scenes 100] [--export OUT] [--json]

`teacher` trains the routes' decoders from scratch on phrase-encoder conditioning
(`training.teacher.train_teacher`; routes that share a decoder in the config share it here) and scores each
route through the real pipeline with the reference answers (as `bench/specialists.py` does), then saves it.

`align` loads a trained model, puts the teachers' decoders in place of its own and fits the routes'
projectors (with --train-llm the LLM and its queries as well, LM loss kept) to map the LLM's link states
onto the frozen teacher encoders' vectors for the same phrases (`training.teacher.align_links`). It then
scores each route's family on --scenes val scenes, generated and teacher-forced, and --export writes the
aligned model as a loadable folder.

`anchor` needs no teachers: it copies the reference model's decoders and projectors into the model and trains
the model's LLM so that its link states, for the training wordings of a request, map to the vectors the
reference gives for the request's template wording (`training.teacher.anchor_links`, LM loss and replay kept).
For a model whose LLM was trained on (LM only) after the reference's decoders were fitted.

`align-images` fits the [GEN] / [EDIT] routes' projectors and their decoders' mappers (with --train-llm the LLM
too) so that the mapped link states match the frozen text encoder's embedding of the target's description
(`training.teacher.align_image_links`; VisionLLM v2 aligns its generation links to CLIP's text features the
same way), then scores the routes' families on --scenes val scenes (`bench/image_links.py` measures the
alignment itself).

With --json the last line is one JSON object (per route: steps, the metrics; for align: alignment cosine,
generated and forced metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: import from the repository root, not bench/ (bench/decoders.py)
    root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [root] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from evaluation.suite import evaluate_pipeline  # noqa: E402
from router.config import load_config  # noqa: E402
from router.pipeline import Pipeline  # noqa: E402
from training.specialists import DECODER_TASKS  # noqa: E402
from training.teacher import (  # noqa: E402
    IMAGE_ROUTES,
    PERCEPTION,
    TRAINING_WORDINGS,
    Teacher,
    align_image_links,
    align_links,
    anchor_links,
    train_teacher,
)

KEYS = {"DET": ("det_ap", "det_ap50", "det_ap_agnostic", "phrase_acc"), "SEG": ("seg_ap", "phrase_acc"),
        "GRD": ("grd_acc50",), "POSE": ("pose_ap", "phrase_acc")}
IMAGE_KEYS = {"GEN": ("gen_acc", "gen_object_f1", "gen_color_f1", "routing_acc"), "EDIT": ("edit_acc", "routing_acc")}


def routes_arg(text: str) -> tuple[str, ...]:
    routes = tuple(r.strip().upper() for r in text.split(",") if r.strip())
    bad = [r for r in routes if r not in PERCEPTION]
    if bad or not routes:
        raise argparse.ArgumentTypeError(f"unknown routes {bad or text!r}; accepted: {', '.join(PERCEPTION)}")
    return routes


def cmd_teacher(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config)
    budget = None if args.budget_cpu_min is None else args.budget_cpu_min * 60
    steps = args.steps if budget is None else None
    init = Teacher.load(args.init, cfg) if args.init else None
    teacher = train_teacher(cfg, args.routes, budget_s=budget, steps=steps, seed=args.seed, clock="cpu",
                            log=lambda m: print(m, flush=True), init=init, lr_schedule=args.lr_schedule)
    teacher.save(args.out)
    result: dict = {"routes": list(args.routes), "steps": teacher.steps, "train_s": teacher.train_s, "out": args.out}
    for r in args.routes:
        result[r] = teacher.evaluate(r, n=args.n)
        print(f"{r}: {result[r]}", flush=True)
    return result


def cmd_align(args: argparse.Namespace) -> dict:
    pipe = Pipeline.from_pretrained(args.model)
    result: dict = {"model": args.model, "teachers": args.teacher, "steps": args.steps, "train_llm": args.train_llm,
                    "replay_weight": args.replay_weight if args.train_llm else None, "scenes": args.scenes}
    try:
        for path in args.teacher:
            teacher = Teacher.load(path, pipe.config)
            out = align_links(pipe, teacher, args.steps, lr=args.lr, seed=args.seed, train_llm=args.train_llm,
                              llm_lr=args.llm_lr, replay_weight=args.replay_weight, log=lambda m: print(m, flush=True))
            result.setdefault("align", {}).update({r: {"cosine": out.cosine[r], "train_s": out.train_s}
                                                   for r in teacher.routes})
        if args.export:
            pipe.save_pretrained(args.export)
            result["export"] = args.export
        routes = [r for path in args.teacher for r in json.loads((Path(path) / "teacher.json").read_text())["routes"]]
        score_routes(pipe, routes, args.scenes, result)
    finally:
        pipe.close()
    return result


def score_routes(pipe: Pipeline, routes: list[str], scenes: int, result: dict) -> None:
    for r in routes:
        family = DECODER_TASKS[r]
        for name, forced in (("generated", False), ("forced", True)):
            t0 = time.perf_counter()
            m = evaluate_pipeline(pipe, n=scenes, families=(family,), teacher_force=forced, wording="template")
            result.setdefault(r, {})[name] = {k: m.get(k) for k in KEYS[r]}
            print(f"{r} {name}: {result[r][name]} ({time.perf_counter() - t0:.0f}s)", flush=True)


def cmd_anchor(args: argparse.Namespace) -> dict:
    pipe, reference = Pipeline.from_pretrained(args.model), Pipeline.from_pretrained(args.reference)
    result: dict = {"model": args.model, "reference": args.reference, "routes": list(args.routes),
                    "steps": args.steps, "llm_lr": args.llm_lr, "replay_weight": args.replay_weight,
                    "scenes": args.scenes}
    try:
        out = anchor_links(pipe, reference, args.routes, args.steps, llm_lr=args.llm_lr,
                           replay_weight=args.replay_weight, wording=args.wording, seed=args.seed,
                           log=lambda m: print(m, flush=True))
        result["anchor"] = {"cosine": out.cosine, "train_s": out.train_s}
        if args.export:
            pipe.save_pretrained(args.export)
            result["export"] = args.export
        if args.scenes:
            score_routes(pipe, list(args.routes), args.scenes, result)
    finally:
        pipe.close()
        reference.close()
    return result


def cmd_align_images(args: argparse.Namespace) -> dict:
    pipe = Pipeline.from_pretrained(args.model)
    result: dict = {"model": args.model, "routes": list(args.routes), "steps": args.steps, "lr": args.lr,
                    "train_llm": args.train_llm, "replay_weight": args.replay_weight if args.train_llm else None,
                    "scenes": args.scenes}
    try:
        out = align_image_links(pipe, args.routes, args.steps, lr=args.lr, seed=args.seed, train_llm=args.train_llm,
                                llm_lr=args.llm_lr, replay_weight=args.replay_weight,
                                log=lambda m: print(m, flush=True))
        result["align"] = {"cosine": out.cosine, "train_s": out.train_s,
                           "mse_last100": {r: round(float(sum(v[-100:]) / max(len(v[-100:]), 1)), 5)
                                           for r, v in out.mse.items()}}
        if args.export:
            pipe.save_pretrained(args.export)
            result["export"] = args.export
        for r in args.routes if args.scenes else ():
            t0 = time.perf_counter()
            m = evaluate_pipeline(pipe, n=args.scenes, families=(DECODER_TASKS[r],), wording="template")
            result[r] = {k: m.get(k) for k in IMAGE_KEYS[r]}
            print(f"{r}: {result[r]} ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        pipe.close()
    return result


def image_routes_arg(text: str) -> tuple[str, ...]:
    routes = tuple(r.strip().upper() for r in text.split(",") if r.strip())
    bad = [r for r in routes if r not in IMAGE_ROUTES]
    if bad or not routes:
        raise argparse.ArgumentTypeError(f"unknown routes {bad or text!r}; accepted: {', '.join(IMAGE_ROUTES)}")
    return routes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher", help="train teacher decoders on phrase-encoder conditioning")
    t.add_argument("--config", default="configs/shapes.yaml")
    t.add_argument("--routes", type=routes_arg, default=("DET", "SEG", "GRD"))
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--budget-cpu-min", type=float, default=None)
    budget.add_argument("--steps", type=int, default=None)
    t.add_argument("--n", type=int, default=500, help="val scenes in total, as `superlink eval --n`")
    t.add_argument("--out", required=True)
    t.add_argument("--init", default=None, help="a teacher folder to go on training (the budget counts new steps)")
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="cosine: the rates fall to 5%% over --steps (an annealed end)")
    a = sub.add_parser("align", help="align a model's links to teachers and score it")
    a.add_argument("--model", default="shapes")
    a.add_argument("--teacher", action="append", required=True, help="a teacher folder (repeatable)")
    a.add_argument("--steps", type=int, default=600, help="alignment steps per teacher")
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--train-llm", action="store_true")
    a.add_argument("--llm-lr", type=float, default=1e-4)
    a.add_argument("--replay-weight", type=float, default=1.0,
                   help="--train-llm: LM loss of one batch of the model's whole training mix per step (0: none)")
    a.add_argument("--scenes", type=int, default=200, help="val scenes per route's family")
    a.add_argument("--export", default=None, help="save the aligned model here")
    n = sub.add_parser("anchor", help="pull a model's link states back to a reference model's (no teachers)")
    n.add_argument("--model", required=True, help="the model whose LLM moved")
    n.add_argument("--reference", default="shapes", help="the model its decoders were fitted on")
    n.add_argument("--routes", type=routes_arg, default=PERCEPTION)
    n.add_argument("--steps", type=int, default=2000, help="anchoring steps in all (the routes take turns)")
    n.add_argument("--llm-lr", type=float, default=1e-4)
    n.add_argument("--replay-weight", type=float, default=1.0)
    n.add_argument("--wording", default=None, choices=TRAINING_WORDINGS,
                   help="the model's instructions' wording (default: its training wording)")
    n.add_argument("--scenes", type=int, default=200, help="val scenes per route's family (0: do not score)")
    n.add_argument("--export", default=None, help="save the anchored model here")
    g = sub.add_parser("align-images", help="align the [GEN]/[EDIT] links to the frozen text encoder and score them")
    g.add_argument("--model", default="shapes")
    g.add_argument("--routes", type=image_routes_arg, default=IMAGE_ROUTES)
    g.add_argument("--steps", type=int, default=600, help="alignment steps in all (the routes take turns)")
    g.add_argument("--lr", type=float, default=1e-3, help="rate of the projectors and mappers")
    g.add_argument("--train-llm", action="store_true")
    g.add_argument("--llm-lr", type=float, default=1e-4)
    g.add_argument("--replay-weight", type=float, default=1.0)
    g.add_argument("--scenes", type=int, default=100, help="val scenes per route's family (0: do not score)")
    g.add_argument("--export", default=None, help="save the aligned model here")
    for p in (t, a, n, g):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "teacher" and args.budget_cpu_min is None and args.steps is None:
        args.budget_cpu_min = 3.0
    torch.set_num_threads(args.threads)
    result = {"teacher": cmd_teacher, "align": cmd_align, "anchor": cmd_anchor,
              "align-images": cmd_align_images}[args.cmd](args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
