"""Benchmark: polygons on request, with and without the decoding constraint.

    python bench/polygons.py [--model shapes] [--n 24] [--json]

Arms, each on the same fixed ShapesWorld val scenes of the evaluation suite's polygon family:
  constrained    the pipeline as shipped: the processor's PolygonConstraint lets through exactly 2N location
                 tokens after each class slot (N read from the instruction)
  free           the same model with the constraint switched off (what it answered before polygons on request)
  unseen_*       the same scenes asked for counts the corpus never holds (4..20 points there): 24, 32 and 48
Per arm: poly_count_ok (fraction of written polygons with exactly N points), poly_ap (mask AP of the
rasterised polygons), polygons per scene, bad_output errors per scene and ms per scene.
With --json the last line is one JSON object holding every arm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

if not __package__:  # run as a script: import from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evaluation.suite import eval_samples, run_samples, score_polygon_counts, score_polygons  # noqa: E402
from router.pipeline import Pipeline  # noqa: E402
from shapesworld.tasks import join_words  # noqa: E402

UNSEEN = (24, 32, 48)


def arm(pipe: Pipeline, pairs: list, batch_size: int) -> dict:
    t0 = time.perf_counter()
    scored = run_samples(pipe, pairs, batch_size=batch_size)
    wall = time.perf_counter() - t0
    ap = score_polygons(scored)
    ok = score_polygon_counts(scored)
    return {
        "poly_count_ok": None if ok is None else round(ok, 4),
        "poly_ap": None if ap is None else round(ap["ap"], 4),
        "polygons_per_scene": round(sum(len(s.response.polygons) for s in scored) / len(scored), 2),
        "errors_per_scene": round(sum(len(s.response.errors) for s in scored) / len(scored), 2),
        "ms_per_scene": round(1000 * wall / len(scored), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="preset name or saved folder")
    parser.add_argument("--n", type=int, default=24, help="polygon scenes (val split, seed 0)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="last line is one JSON object")
    args = parser.parse_args()

    pipe = Pipeline.from_pretrained(args.model, decoders=[])
    cfg = pipe.config
    pairs = eval_samples("val", args.n, 0, cfg.training.image_size, cfg.model.vocab.location_bins, ("polygon",))
    out: dict = {"model": args.model, "n": len(pairs)}
    out["constrained"] = arm(pipe, pairs, args.batch_size)
    constraint = pipe.processor.decoding_constraint
    pipe.processor.decoding_constraint = lambda *a, **k: None  # the model left to itself
    try:
        out["free"] = arm(pipe, pairs, args.batch_size)
        for n in UNSEEN:
            asked = [(f, replace(s, instruction=re.sub(r"(?s)\n.*", "", s.instruction)
                                 + f"\nSegment each {join_words(s.classes)} with a {n}-point polygon."))
                     for f, s in pairs]  # fmt: skip
            out[f"unseen_{n}_free"] = arm(pipe, asked, args.batch_size)
            pipe.processor.decoding_constraint = constraint
            out[f"unseen_{n}_constrained"] = arm(pipe, asked, args.batch_size)
            pipe.processor.decoding_constraint = lambda *a, **k: None
    finally:
        pipe.processor.decoding_constraint = constraint
    if not args.json:
        for k, v in out.items():
            print(f"{k}: {v}")
    print(json.dumps(out) if args.json else "")


if __name__ == "__main__":
    main()
