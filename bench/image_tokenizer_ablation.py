"""Ablation: the language-guided image tokenizer (VisionLLM v1, section 3.2) off vs on, at equal budget.

    python bench/image_tokenizer_ablation.py --steps 150 --n 100 --json

Both arms start from `--init` (default the shipped `shapes` checkpoint) and are fine-tuned for `--steps`
steps with the same seed and the same batches of ShapesWorld grounding and VQA samples (joint loss: LM +
the [GRD] detector loss). The "on" arm adds model.image_tokenizer (combine "add": the query tokens enter
through a zero-initialised gate, so it starts exactly as the "off" arm). Each arm is then scored with the
ShapesWorld eval suite on the grounding and VQA families (`--n` val scenes in all): grd_acc50, vqa_acc.
With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402

from bench.native_decoding import finetune  # noqa: E402
from evaluation.suite import evaluate_pipeline  # noqa: E402
from mllm.config import ImageTokenizerConfig  # noqa: E402
from mllm.modeling import SuperLinkModel  # noqa: E402
from router.pipeline import Pipeline  # noqa: E402

TASKS = ("grounding", "vqa")
FAMILIES = ("grounding", "vqa")


def with_image_tokenizer(pipe: Pipeline, tokenizer: ImageTokenizerConfig) -> None:
    """Give the pipeline's model a fresh language-guided image tokenizer (every other weight kept)."""
    old = pipe.system.model
    cfg = old.config.model_copy(update={"image_tokenizer": tokenizer}, deep=True)
    new = SuperLinkModel(cfg, old.tokenizer, llava=old.llava)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(not k.startswith("image_tokenizer.") for k in missing):
        raise RuntimeError(f"unexpected weights when adding the image tokenizer: {missing=} {unexpected=}")
    pipe.system.model = new
    pipe.config = pipe.config.model_copy(update={"model": cfg}, deep=True)


def run_arm(on: bool, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    pipe = Pipeline.from_pretrained(args.init)
    if on:
        with_image_tokenizer(pipe, ImageTokenizerConfig(num_layers=args.layers, combine="add"))
    train = finetune(pipe, args.steps, args.batch_size, args.seed, args.lr, tasks=TASKS, decoders=True)
    scores = evaluate_pipeline(pipe, split="val", n=args.n, families=FAMILIES)
    gate = float(torch.tanh(pipe.system.model.image_tokenizer.gate.detach())) if on else None
    return {"grd_acc50": scores["grd_acc50"], "vqa_acc": scores["vqa_acc"], "routing_acc": scores["routing_acc"],
            "tanh_gate": gate, "train": train, "eval_wall_s": scores["wall_s"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", default="shapes")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2.5e-4)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=100, help="val scenes, half grounding and half VQA")
    ap.add_argument("--arms", nargs="+", choices=("off", "on"), default=["off", "on"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = {arm: run_arm(arm == "on", args) for arm in args.arms}
    out.update(steps=args.steps, n=args.n, threads=torch.get_num_threads())
    for arm in args.arms:
        print(f"{arm}: grd_acc50 {out[arm]['grd_acc50']} vqa_acc {out[arm]['vqa_acc']}", file=sys.stderr)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
