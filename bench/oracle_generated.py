"""The [GEN] / [EDIT] scoring ceiling: exact targets taken to the decoder's size and read back.

    python bench/oracle_generated.py [--config configs/shapes.yaml] [--n 300] [--json]

A perfect generator or editor draws the exact target at its own `image_size` (32 px for `shapes`). This
takes each val target there the way the decoder sees its training targets (`decoders.images.prepare_images`)
and scores it through `evaluation.suite` as a response image ([GEN] at the decoder's size, [EDIT] back at the
source size, as the editor returns it), so `gen_acc` / `edit_acc` can only be that high. Beside it, the same
images read with the oracle's own noise floor (`shapesworld.oracle.read_objects`, made for 128-px renders),
which the suite used before `evaluation.suite.GENERATED_MIN_AREA`. Prints one line per family; with --json
the last line is one JSON object: n, decoder_size, gen_ceiling, edit_ceiling, gen_ceiling_oracle_floor,
edit_ceiling_oracle_floor, min_target_area (smallest visible target object, px at scene size).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

if not __package__:  # run as a script: import from the repository root, not bench/ (bench/decoders.py)
    root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [root] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from decoders.images import prepare_images  # noqa: E402
from evaluation import suite  # noqa: E402
from evaluation.metrics import editing_accuracy, generation_accuracy  # noqa: E402
from router.config import load_config  # noqa: E402
from router.schemas import GeneratedImage, Response  # noqa: E402


def at_decoder_size(image: np.ndarray, size: int) -> np.ndarray:
    """The image as the decoder's training target: bilinear, antialiased, (size, size), uint8."""
    pixels, _ = prepare_images([image], size, 10**8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return (pixels[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def _response(route: str, image: np.ndarray) -> Response:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    return Response(text="", raw_text="", images=[GeneratedImage(route=route, png_base64=png, width=image.shape[1],
                                                                 height=image.shape[0])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--n", type=int, default=300, help="val samples per family")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if cfg.decoders.generator is None or cfg.decoders.editor is None:
        raise SystemExit(f"{args.config}: needs decoders.generator and decoders.editor")
    gen_size, edit_size = cfg.decoders.generator.image_size, cfg.decoders.editor.image_size
    gens = [s for _, s in suite.eval_samples("val", args.n, families=("generation",))]
    edits = [s for _, s in suite.eval_samples("val", args.n, families=("editing",))]
    areas = [int(m.sum()) for s in gens + edits for m in s.targets[0].masks]

    gen_scored, gen_old = [], []
    for s in gens:
        small = at_decoder_size(s.targets[0].image, gen_size)
        gen_scored.append(suite.Scored("generation", s, _response("GEN", small)))
        back = suite.at_scene_size(small, s.targets[0].image.shape[:2])
        gen_old.append(generation_accuracy([back], [s.targets[0].objects]))
    edit_scored, edit_old = [], []
    for s in edits:
        target = s.targets[0].image
        back = suite.at_scene_size(at_decoder_size(target, edit_size), target.shape[:2])
        edit_scored.append(suite.Scored("editing", s, _response("EDIT", back)))
        edit_old.append(editing_accuracy([back], [suite.edit_expectation(s)]))

    result = {
        "config": args.config, "n": args.n, "decoder_size": gen_size, "edit_decoder_size": edit_size,
        "gen_ceiling": round(suite.score_generation(gen_scored), 3),
        "edit_ceiling": round(suite.score_editing(edit_scored), 3),
        "gen_ceiling_oracle_floor": round(float(np.mean(gen_old)), 3),
        "edit_ceiling_oracle_floor": round(float(np.mean(edit_old)), 3),
        "generated_min_area": suite.GENERATED_MIN_AREA, "min_target_area": min(areas),
    }  # fmt: skip
    for fam in ("gen", "edit"):
        print(f"{fam}: exact targets at {result['decoder_size']} px read right {result[f'{fam}_ceiling']} "
              f"(oracle's own floor: {result[f'{fam}_ceiling_oracle_floor']}) of {args.n}")
    print(f"smallest visible target object: {result['min_target_area']} px at scene size")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
