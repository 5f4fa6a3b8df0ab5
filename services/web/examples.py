"""The web page's example scenes: a few ShapesWorld pictures with instructions that fit them.

    python -m services.web.examples          # rewrites static/examples/ (PNGs + examples.json)

The files are committed (about 2 KB a scene), so nothing is generated at install or serve time;
tests/services/test_web.py checks that this script still reproduces them byte for byte.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.web import STATIC_DIR
from shapesworld.tasks import make_sample

EXAMPLES_DIR = STATIC_DIR / "examples"
# (title, seed, kind the compound suggestion segments): compound ShapesWorld scenes from the demo's seed space,
# apart from the training/eval splits; the kinds are ones the shipped model segments in that scene.
SCENES: tuple[tuple[str, int, str], ...] = (
    ("scene A", 21, "square"), ("scene B", 25, "circle"), ("scene C", 40, "hexagon"), ("scene D", 16, "pentagon"),
)
BASE_SEED = 7_000_000  # the demo's seed space (services/demo.py)
IMAGE_SIZE = 128


def instructions(scene: Any, own: str, segment: str) -> list[str]:
    """Requests that fit the scene: compound requests first (masks, boxes and a generated image), then one per route."""
    kinds = list(dict.fromkeys(o.kind for o in scene.objects))
    first, second = segment, next((k for k in kinds if k != segment), segment)
    obj = scene.objects[-1]
    return [
        f"Do three things: segment every {first}; find the {obj.color} {obj.kind}; draw a green circle and two yellow squares.",
        f"First segment every {second}; then find the keypoints of every {first}.",
        own.removeprefix("<image>\n"),
        f"Detect every {first} and {second}, and draw a blue star.",
        f"Locate all objects of these categories: {', '.join(kinds[:3])}.",
        "Tell me which objects are shown.",
        "What colour is the object in <region>?",
        f"Shift the {obj.color} {obj.kind} right.",
        "Produce an image containing three pink hexagons.",
    ]


def make_examples(out: Path = EXAMPLES_DIR) -> list[dict[str, Any]]:
    """Write NN.png per scene and examples.json (file, title, instructions); returns the records."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (title, seed, segment) in enumerate(SCENES):
        sample = make_sample("compound", np.random.default_rng([BASE_SEED, seed]), IMAGE_SIZE, 64)
        name = f"{k:02d}.png"
        buf = io.BytesIO()
        Image.fromarray(sample.image).save(buf, format="PNG", optimize=True)
        (out / name).write_bytes(buf.getvalue())
        records.append({"file": name, "title": title, "instructions": instructions(sample.scene, sample.instruction, segment)})
    (out / "examples.json").write_text(json.dumps({"examples": records}, indent=1) + "\n")
    return records


if __name__ == "__main__":
    for r in make_examples():
        print(r["file"], r["instructions"][:2])
