"""Perception AP split by phrase kind: does a colour word in the category ("cyan triangle") cost AP?

    python bench/ap_by_phrase.py [--model shapes] [--scenes 200] [--routes DET,SEG,POSE] [--json]

Runs `superlink eval`'s val scenes of each route's family through the real pipeline and scores COCO AP
(`evaluation.suite.score_routed`) three times per route: over every phrase, over coloured phrases only
("red circle") and over plain kinds only ("circle"), each also class-agnostic (localisation alone). A
route whose links drop the colour word would score much lower on coloured phrases wherever a scene holds
the same kind in another colour. With --json the last line is one JSON object:
{"<ROUTE>.<all|colour|plain>": {"scenes", "ap", "ap50", "agnostic"}, ..., "model", "scenes", "wall_s"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# bench/decoders.py would shadow the `decoders` package: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from evaluation.suite import FAMILIES, Scored, eval_samples, run_samples, score_routed  # noqa: E402

ROUTES: dict[str, tuple[str, str]] = {"DET": ("detection", "bbox"), "SEG": ("segmentation", "segm"),
                                      "POSE": ("keypoints", "keypoints")}
SPLITS: dict[str, Callable[[str], bool]] = {
    "all": lambda phrase: True,
    "colour": lambda phrase: len(phrase.split()) > 1,
    "plain": lambda phrase: len(phrase.split()) == 1,
}


def restrict(scored: Sequence[Scored], keep: Callable[[str], bool]) -> list[Scored]:
    """The scored samples with only the targets whose phrase `keep` accepts (samples left without any
    dropped); predictions for the dropped phrases fall out of scoring with their categories."""
    out = []
    for s in scored:
        targets = [t for t in s.sample.targets if keep(t.phrase)]
        if targets:
            out.append(dataclasses.replace(s, sample=dataclasses.replace(s.sample, targets=targets)))
    return out


def split_scores(scored: Sequence[Scored], route: str, iou_type: str) -> dict[str, dict]:
    out = {}
    for name, keep in SPLITS.items():
        sub = restrict(scored, keep)
        ap = score_routed(sub, route, iou_type)
        agnostic = score_routed(sub, route, iou_type, agnostic=True)
        out[f"{route}.{name}"] = {"scenes": len(sub), "ap": ap and round(ap["ap"], 4),
                                  "ap50": ap and round(ap["ap50"], 4), "agnostic": agnostic and round(agnostic["ap"], 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes", help="a preset name or a saved model folder")
    ap.add_argument("--scenes", type=int, default=200, help="val scenes per route's family")
    ap.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated, of {', '.join(ROUTES)}")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    routes = [r.strip().upper() for r in args.routes.split(",") if r.strip()]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise SystemExit(f"--routes: unknown {unknown}; accepted: {', '.join(ROUTES)}")
    from router.pipeline import Pipeline

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.model)
    families = tuple(f for f in FAMILIES if f in {ROUTES[r][0] for r in routes})
    cfg = pipe.config
    pairs = eval_samples("val", args.scenes * len(families), 0, cfg.training.image_size,
                         cfg.model.vocab.location_bins, families)
    scored = run_samples(pipe, pairs, args.batch_size)
    pipe.close()
    result: dict = {"model": args.model, "scenes": args.scenes}
    for route in routes:
        family, iou_type = ROUTES[route]
        part = split_scores([s for s in scored if s.family == family], route, iou_type)
        result.update(part)
        for key, v in part.items():
            print(f"{key:12s} scenes {v['scenes']:4d}  AP {v['ap']}  AP50 {v['ap50']}  agnostic AP {v['agnostic']}",
                  flush=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
