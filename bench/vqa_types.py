"""VQA by question type: does a model read the picture, or answer each kind of question with its prior?

    python bench/vqa_types.py [--model checkpoints/shapes] [--n 300] [--wording template] [--json]

Runs `n` ShapesWorld val VQA questions (the scenes and questions of `superlink eval`'s VQA family) through
the Pipeline and splits them by the type of the expected answer: `count` (a number), `exists` (yes / no),
`color`, `shape`, `side` (left / right) and `height` (top / bottom). For each type: accuracy, `prior` (the
accuracy of always giving that type's most frequent expected answer on these questions) and `distinct`
(how many different answers the model gave). A type whose accuracy sits at its prior with one distinct
answer is answered without looking at the image. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

# bench/decoders.py would shadow the `decoders` package: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from evaluation.suite import eval_samples, run_samples  # noqa: E402
from router.pipeline import Pipeline  # noqa: E402
from shapesworld.constants import COLORS, KINDS  # noqa: E402
from shapesworld.tasks import NUMBERS  # noqa: E402

ANSWER_TYPES: dict[str, tuple[str, ...]] = {"count": NUMBERS, "exists": ("yes", "no"), "color": tuple(COLORS),
                                            "shape": KINDS, "side": ("left", "right"), "height": ("top", "bottom")}


def answer_type(answer: str) -> str:
    word = normalise(answer)
    for kind, words in ANSWER_TYPES.items():
        if word in words:
            return kind
    raise ValueError(f"VQA answer {answer!r} is of no known type; accepted words: {ANSWER_TYPES}")


def normalise(text: str) -> str:
    return text.strip().strip(".").strip().lower()


def by_type(pairs: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """(expected, given) answers -> per type: n, acc, prior, distinct."""
    groups: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for want, got in pairs:
        groups[answer_type(want)].append((normalise(want), normalise(got)))
    out = {}
    for kind, xs in sorted(groups.items()):
        top = collections.Counter(w for w, _ in xs).most_common(1)[0][1]
        out[kind] = {"n": len(xs), "acc": round(sum(w == g for w, g in xs) / len(xs), 3),
                     "prior": round(top / len(xs), 3), "distinct": len({g for _, g in xs})}
    return out


def measure(model: str, n: int, wording: str) -> dict:
    pipe = Pipeline.from_pretrained(model)
    try:
        cfg = pipe.config
        pairs = eval_samples("val", n, 0, cfg.training.image_size, cfg.model.vocab.location_bins, ("vqa",),
                             wording=wording)
        scored = run_samples(pipe, pairs, 16)
    finally:
        pipe.close()
    answers = [(s.sample.answer, s.response.text) for s in scored]
    types = by_type(answers)
    prior = sum(t["prior"] * t["n"] for t in types.values()) / len(answers)
    acc = sum(normalise(w) == normalise(g) for w, g in answers) / len(answers)
    return {"model": model, "n": len(answers), "wording": wording, "vqa_acc": round(acc, 3),
            "prior_acc": round(prior, 3), "types": types}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="checkpoints/shapes", help="preset name or saved model folder")
    ap.add_argument("--n", type=int, default=300, help="VQA questions")
    ap.add_argument("--wording", choices=("template", "heldout"), default="template")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    result = measure(args.model, args.n, args.wording)
    print(f"{result['model']}: vqa_acc {result['vqa_acc']} (always the most frequent answer per type: "
          f"{result['prior_acc']}), {result['n']} questions")
    for kind, t in result["types"].items():
        print(f"  {kind:7s} n={t['n']:4d} acc={t['acc']:.3f} prior={t['prior']:.3f} distinct answers={t['distinct']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
