"""Routing on plainly worded requests written by hand, not drawn from the instruction grammar.

    python bench/natural_requests.py [--model shapes] [--json]

The grammar's held-out part (`superlink eval --wording heldout`) puts unseen choices (verbs, frames, casing,
typos) into patterns the grammar knows. These are requests as a person types them ("Find all of the blue squares.",
"Can you cut out the hexagons?", "Detect the squares, then draw a red star."), written for this benchmark, not
drawn from the grammar. Some are plain enough that the training grammar also writes them: with the categories
masked, 16 of the 48 were among 27 000 sampled training wordings (most of them the text questions and [GRD]
requests). Each has the set of routes a correct answer fires ([] for a text answer); requests that ask about or
change a picture carry one fixed ShapesWorld val scene, generation requests none.

Prints each request, the routes fired and the answer; with --json the last line is one JSON object:
routing_acc, routing_by_group (det, seg, grd, pose, text, gen, edit, compound), n, failures, model, wall_s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: import from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# (group, expected routes, instruction); group "gen" requests are sent without an image
REQUESTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("det", ("DET",), "Find all of the blue squares."),
    ("det", ("DET",), "Could you detect the stars in this picture?"),
    ("det", ("DET",), "Locate the circles and the triangles."),
    ("det", ("DET",), "I'd like boxes around every cross, please."),
    ("det", ("DET",), "Where are all the hexagons?"),
    ("det", ("DET",), "Please find the pentagons for me."),
    ("det", ("DET",), "Show me all the triangles in the image."),
    ("det", ("DET",), "Find every green circle and every yellow star."),
    ("det", ("DET",), "Put bounding boxes on the crosses."),
    ("det", ("DET",), "Hey, can you detect the red stars?"),
    ("seg", ("SEG",), "Segment all the circles."),
    ("seg", ("SEG",), "Give me a mask for each star."),
    ("seg", ("SEG",), "Please segment the red triangles."),
    ("seg", ("SEG",), "Can you cut out the hexagons?"),
    ("seg", ("SEG",), "Create instance masks for every square and cross."),
    ("seg", ("SEG",), "Mask the pentagons, thanks."),
    ("grd", ("GRD",), "Where is the blue circle?"),
    ("grd", ("GRD",), "Find the red star."),
    ("grd", ("GRD",), "Show me the yellow triangle."),
    ("grd", ("GRD",), "Locate the leftmost square."),
    ("grd", ("GRD",), "Highlight the green hexagon, please."),
    ("pose", ("POSE",), "Find the corners of all the squares."),
    ("pose", ("POSE",), "Give me the keypoints of every triangle."),
    ("pose", ("POSE",), "Where are the vertices of the stars?"),
    ("pose", ("POSE",), "Estimate the pose of the crosses."),
    ("text", (), "How many stars can you see?"),
    ("text", (), "Is there a blue circle?"),
    ("text", (), "What colour is the hexagon?"),
    ("text", (), "What shape is the red object?"),
    ("text", (), "Describe the picture, please."),
    ("text", (), "What is in this image?"),
    ("text", (), "Tell me what you see."),
    ("text", (), "Is the square on the left or the right?"),
    ("gen", ("GEN",), "Draw a blue star."),
    ("gen", ("GEN",), "Please create a picture of two red circles."),
    ("gen", ("GEN",), "Generate an image with a green triangle and a yellow square."),
    ("gen", ("GEN",), "Can you draw three purple crosses?"),
    ("gen", ("GEN",), "Paint an orange hexagon."),
    ("edit", ("EDIT",), "Make the star red."),
    ("edit", ("EDIT",), "Remove the circle."),
    ("edit", ("EDIT",), "Please delete the blue square."),
    ("edit", ("EDIT",), "Change the colour of the triangle to green."),
    ("edit", ("EDIT",), "Add a red circle to the picture."),
    ("edit", ("EDIT",), "Move the cross to the left."),
    ("compound", ("DET", "SEG"), "Find all the stars and segment the circles."),
    ("compound", ("DET", "GEN"), "Detect the squares, then draw a red star."),
    ("compound", ("POSE", "SEG"), "Segment every triangle and find the keypoints of the crosses."),
    ("compound", ("DET", "GEN"), "Locate the hexagons and draw me a blue circle."),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes", help="a preset name or a saved model folder")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from router.pipeline import Pipeline
    from router.schemas import Options, Request
    from shapesworld.scene import render, sample_scene

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.model)
    scene = Image.fromarray(render(sample_scene(np.random.default_rng([1_000_000, 7]), pipe.config.training.image_size)))
    requests = [Request(images=[] if group == "gen" else [scene], instruction=text, options=Options(max_new_tokens=96, seed=i))
                for i, (group, _, text) in enumerate(REQUESTS)]
    responses = []
    for i in range(0, len(requests), args.batch_size):
        responses += pipe(requests[i : i + args.batch_size])
    pipe.close()
    hits: dict[str, list[bool]] = {}
    failures = []
    for (group, want, text), resp in zip(REQUESTS, responses, strict=True):
        got = sorted(set(resp.routes))
        ok = got == sorted(want)
        hits.setdefault(group, []).append(ok)
        if not ok:
            failures.append({"instruction": text, "want": sorted(want), "got": got})
        print(f"{'ok ' if ok else 'BAD'} {group:8s} want {'+'.join(sorted(want)) or '-':9s} got {'+'.join(got) or '-':9s} "
              f"| {text} -> {resp.text[:60]!r}", flush=True)
    every = [h for v in hits.values() for h in v]
    result = {"model": args.model, "n": len(every), "routing_acc": round(float(np.mean(every)), 4),
              "routing_by_group": {g: round(float(np.mean(v)), 4) for g, v in hits.items()},
              "failures": failures, "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"routing_acc {result['routing_acc']} ({sum(every)}/{len(every)})  by group {result['routing_by_group']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
