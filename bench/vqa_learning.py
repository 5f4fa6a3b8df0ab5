"""What stops the LLM learning VQA? Short VQA-only runs with controlled image tokens and question types.

    python bench/vqa_learning.py [--image vision|probe|oracle|oracle_pos|oracle_words|scene|answer|text] [--types color,shape] [--steps 1500]
                                 [--schedule 600:color,1200:color+shape] [--max-objects 1] [--balanced]
                                 [--objects-schedule 500:1,1500:2] [--device auto] [--max-minutes 7]
                                 [--pretrain-dense 800] [--freeze-image] [--init checkpoints/shapes] [--json]

Trains the config's SuperLink model (no decoders) on ShapesWorld VQA alone, the LM loss at one learning
rate for every group (constant after a linear warm-up), and every --eval-every steps scores the exact
teacher-forced answer (every answer token right) on fixed val questions: all of them, by answer type, and
on one-object scenes. Teacher forcing makes a point cost one forward pass; `superlink eval` generates.

What the image tokens are (--image):
  vision  the model's own vision tower and projector, as in training
  probe   a learned linear map of the model's fixed dense probe's per-patch predictions (needs
          --pretrain-dense and --freeze-image)
  oracle  a learned linear map of ShapesWorld's exact per-patch labels (kind and colour coverage, centres;
          `Scene.dense_labels()` pooled to the patch grid): perfect per-patch perception, but each token
          says nothing of where its patch is (the LLM's rotary positions alone tell the patches apart)
  oracle_pos  the same labels with each patch's row and column one-hot beside them, as a vision tower's
          position embeddings would give
  oracle_words  oracle_pos plus, in each token, the LLM's own input embeddings of the kind and colour words
          covering the patch (weighted by coverage): image tokens in the question words' space
  scene   the same labels averaged over the whole image, in every token: no need to find the object
  answer  a one-hot of the answer word in every token: the answer only has to be copied
  text    no image: the scene written out in the prompt instead ("scene: red circle left top. ..." per object, in
          depth order), in words the tokenizer holds as one token each: perfect perception in the LLM's own
          vocabulary, so what is left is matching the question against the objects and counting
Answer types: count, exists, side, height, shape, color (read off the answer word). --types keeps only
some in training (val keeps all); --schedule widens them by step (`until:type+type,...`, then --types);
--max-objects caps training scenes and --objects-schedule widens that cap by step (`until:max,...`, then
--max-objects): a curriculum from one-object scenes, where a question needs no lookup, to crowded
ones; --balanced rejection-samples training questions towards equal types.
With a config that has model.dense_probe, its per-patch loss is added to the LM loss (vision only);
--pretrain-dense N first trains the tower, connector and probe N steps on that loss alone, and
--freeze-image keeps them fixed afterwards, so only the LLM learns the questions (--pretrain-batch B sets
the pre-training batch apart from --batch, e.g. 8 before VQA at 256).
--init DIR starts from a saved model (its tokenizer, and every tensor whose name and shape fit; the config
must describe the same model, plus any dense probe): does a trained LLM learn to read as fast as a fresh one?
--device cuda (or auto) runs the same on a GPU, float32, for runs too long for this CPU (bench/vqa_device.sh);
--max-minutes M stops training after M minutes of wall time, scores and reports ("steps" says where).
The prior is the share of val questions whose answer is their type's most frequent answer. With --json
the last line is one JSON object: steps, acc, acc_by_type, acc_one_object, acc_one_object_by_type, prior,
prior_by_type, history, init.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

# bench/decoders.py would shadow the `decoders` package: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import shapesworld.tasks as tasks  # noqa: E402
from mllm.devices import resolve_device  # noqa: E402
from mllm.modeling import SuperLinkModel  # noqa: E402
from mllm.vocab import IMAGE_TOKEN  # noqa: E402
from router.config import load_config  # noqa: E402
from router.loss import collate, dense_probe_loss, dense_targets, model_inputs  # noqa: E402
from router.system import build_system  # noqa: E402
from shapesworld.constants import COLORS, KINDS  # noqa: E402
from shapesworld.scene import DENSE_LABELS, MAX_OBJECTS, sample_scene  # noqa: E402
from training.train import (  # noqa: E402
    build_optimizer,
    build_scheduler,
    init_tokenizer,
    init_weights,
    is_connector,
    set_trainable,
)

TYPES = ("count", "exists", "side", "height", "shape", "color")
ANSWERS = (*tasks.NUMBERS, "yes", "no", "left", "right", "top", "bottom", *KINDS, *COLORS)
VAL_SEED, VAL_ONE_SEED, TRAIN_SEED, PRETRAIN_SEED = 999, 998, 1, 2
BALANCE = {"count": .35, "exists": .17, "side": .17, "height": .15, "shape": .10, "color": .09}  # val shares


def answer_type(answer: str) -> str:
    a = answer.strip()
    if a in tasks.NUMBERS:
        return "count"
    for t, words in (("exists", ("yes", "no")), ("side", ("left", "right")), ("height", ("top", "bottom"))):
        if a in words:
            return t
    if a in KINDS:
        return "shape"
    if a in COLORS:
        return "color"
    raise ValueError(f"VQA answer {answer!r} of no known type")


def as_text(sample):
    """The sample with its picture replaced by the scene written out: '{colour} {kind} {left|right} {top|bottom}.'
    per object (centre against the image's middle), in depth order, after 'scene:' where the <image> placeholder was."""
    if not sample.instruction.startswith(IMAGE_TOKEN) or sample.scene is None:
        raise ValueError(f"a VQA instruction starts with {IMAGE_TOKEN!r} and has its scene; got {sample.instruction[:40]!r}")
    scene, half = sample.scene, sample.scene.image_size / 2
    lines = [f"{o.color} {o.kind} {'left' if o.center[0] < half else 'right'} {'top' if o.center[1] < half else 'bottom'}."
             for o in scene.objects]
    # "scene:" first, so each colour word follows a space as it does in questions (one token each).
    return replace(sample, image=None, instruction="scene: " + " ".join(lines) + sample.instruction[len(IMAGE_TOKEN):])


def on(device: torch.device, inputs: dict) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def parse_objects_schedule(text: str) -> list[tuple[int, int]]:
    try:
        out = [(int(until), int(cap)) for until, cap in (part.split(":") for part in filter(None, text.split(",")))]
    except ValueError:
        raise SystemExit(f"--objects-schedule {text!r}: expected until:max_objects,... with whole numbers, "
                         "e.g. 500:1,1500:2") from None
    if any(not 1 <= cap <= MAX_OBJECTS for _, cap in out):
        raise SystemExit(f"--objects-schedule: a scene holds 1 to {MAX_OBJECTS} objects")
    return out


def parse_schedule(text: str) -> list[tuple[int, set[str]]]:
    out = []
    for part in filter(None, text.split(",")):
        until, types = part.split(":")
        unknown = set(types.split("+")) - set(TYPES)
        if unknown:
            raise SystemExit(f"--schedule: unknown answer types {sorted(unknown)}; accepted: {', '.join(TYPES)}")
        out.append((int(until), set(types.split("+"))))
    return out


class Questions:
    """VQA samples by (split seed, step), optionally capped in objects and filtered/balanced by type."""

    def __init__(self, cfg, max_objects: int | None, text: bool = False) -> None:
        self.cfg, self.max_objects, self.text = cfg, max_objects, text

    def draw(self, seed: int, step: int, n: int, types: set[str] | None = None, balanced: bool = False,
             max_objects: int | None = None) -> list:
        rng = np.random.default_rng([seed, 7, step])
        cap = max_objects
        original = tasks.sample_scene
        tasks.sample_scene = lambda r, size=128, n_objects=None: sample_scene(
            r, size, n_objects if n_objects is not None or cap is None else int(r.integers(1, cap + 1)))
        try:
            out = []
            while len(out) < n:
                s = tasks.make_sample("vqa", rng, self.cfg.training.image_size, self.cfg.model.vocab.location_bins)
                t = answer_type(s.answer)
                if types is not None and t not in types:
                    continue
                if balanced and rng.random() > min(BALANCE.values()) / BALANCE[t]:
                    continue
                out.append(as_text(s) if self.text else s)
            return out
        finally:
            tasks.sample_scene = original


class ControlledImages:
    """Image tokens computed from labels, looked up by the pixel values the processor made of each image."""

    def __init__(self, mode: str, processor, grid: int) -> None:
        self.mode, self.processor, self.grid = mode, processor, grid
        self.labels: dict[str, torch.Tensor] = {}
        placed = mode in ("oracle_pos", "oracle_words")
        self.width = len(ANSWERS) if mode == "answer" else len(DENSE_LABELS) + (2 * grid if placed else 0)
        if mode == "oracle_words":  # each kind and colour label's word, one token of the model's vocabulary
            words = [w for w in DENSE_LABELS if w in KINDS or w in COLORS]
            ids = [processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
            if any(len(i) != 1 for i in ids):
                pieces = {w: len(i) for w, i in zip(words, ids, strict=True) if len(i) != 1}
                raise SystemExit(f"--image oracle_words needs every kind and colour as one token; tokens per word: {pieces}")
            self.word_cols = torch.tensor([DENSE_LABELS.index(w) for w in words])
            self.word_ids = torch.tensor([i[0] for i in ids])

    @staticmethod
    def key(pixels: torch.Tensor) -> str:
        return hashlib.sha1(pixels.detach().float().contiguous().numpy().tobytes()).hexdigest()

    def register(self, samples) -> None:
        pixels, _ = self.processor.preprocess_images([s.image for s in samples])
        targets, _ = dense_targets(samples, self.grid)
        for row, px, s in zip(targets, pixels, samples, strict=True):
            if self.mode == "answer":
                row = torch.zeros(row.shape[0], self.width)
                row[:, ANSWERS.index(s.answer.strip())] = 1.0
            elif self.mode == "scene":
                row = row.mean(0, keepdim=True).expand_as(row) * 10  # coverage of a whole image is small
            elif self.mode in ("oracle_pos", "oracle_words"):  # + each patch's row and column, one-hot
                cells = torch.arange(self.grid * self.grid)
                eye = torch.eye(self.grid)
                row = torch.cat([row, eye[cells // self.grid], eye[cells % self.grid]], dim=1)
            self.labels[self.key(px)] = row

    def encode(self, model: SuperLinkModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.stack([self.labels[self.key(px)] for px in pixel_values.float().cpu()]).to(pixel_values.device)
        tokens = model.controlled_images(labels)
        if self.mode == "oracle_words":  # + the coverage-weighted sum of the label words' own input embeddings
            words = model.embed_inputs(self.word_ids.to(labels.device)[None])[0]
            tokens = tokens + labels[..., self.word_cols.to(labels.device)] @ words
        return labels, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/shapes.yaml")
    ap.add_argument("--image", choices=("vision", "probe", "oracle", "oracle_pos", "oracle_words", "scene", "answer", "text"), default="vision")
    ap.add_argument("--types", default=",".join(TYPES), help="answer types trained on (comma-separated)")
    ap.add_argument("--schedule", default="", help="until:type+type,... before --types applies")
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--objects-schedule", default="", help="until:max_objects,... before --max-objects applies")
    ap.add_argument("--balanced", action="store_true")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val", type=int, default=512, help="val questions (plus 128 on one-object scenes)")
    ap.add_argument("--pretrain-dense", type=int, default=0, metavar="N",
                    help="first N steps train the tower, projector and model.dense_probe on the dense labels alone")
    ap.add_argument("--pretrain-batch", type=int, default=None, metavar="B",
                    help="batch of the --pretrain-dense steps (default: --batch)")
    ap.add_argument("--freeze-image", action="store_true",
                    help="after --pretrain-dense, keep the tower, connector and probe fixed (the LLM alone learns)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop training after this wall time (the pre-training included), score, and report")
    ap.add_argument("--init", default=None, metavar="DIR",
                    help="start from a saved model folder (its tokenizer and every tensor that fits), e.g. checkpoints/shapes")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (the GPU when there is one); float32 throughout")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    types = set(args.types.split(","))
    if types - set(TYPES):
        raise SystemExit(f"--types: unknown {sorted(types - set(TYPES))}; accepted: {', '.join(TYPES)}")
    schedule = parse_schedule(args.schedule)
    objects_schedule = parse_objects_schedule(args.objects_schedule)

    cfg = load_config(args.config)
    batch = args.batch or cfg.training.batch_size
    probe = cfg.model.dense_probe
    if args.pretrain_dense and (probe is None or args.image not in ("vision", "probe")):
        raise SystemExit("--pretrain-dense needs --image vision or probe and a config with model.dense_probe")
    if args.image == "probe" and not (args.pretrain_dense and args.freeze_image):
        raise SystemExit("--image probe needs --pretrain-dense N and --freeze-image (it reads a trained, fixed probe)")
    if args.freeze_image and not args.pretrain_dense:
        raise SystemExit("--freeze-image needs --pretrain-dense N (a from-scratch tower kept fixed sees nothing)")
    torch.manual_seed(0)
    device = resolve_device(args.device)
    tokenizer = init_tokenizer(Path(args.init), cfg) if args.init else None
    system, processor = build_system(cfg, decoders=[], tokenizer=tokenizer)
    if args.init:
        copied = init_weights(system, Path(args.init))
        print(f"--init {args.init}: {copied['copied']} tensors copied, {copied['fresh']} start fresh", file=sys.stderr)
    images = None
    if args.image == "probe":
        system.model.controlled_images = nn.Linear(probe.labels, cfg.model.text.hidden_size)  # group "llm"
    if args.image not in ("vision", "probe", "text"):
        images = ControlledImages(args.image, processor, cfg.model.vision.image_size // cfg.model.vision.patch_size)
        system.model.controlled_images = nn.Linear(images.width, cfg.model.text.hidden_size)  # group "llm"
        SuperLinkModel.encode_images = lambda self, pixel_values: images.encode(self, pixel_values)
    system.to(device)
    questions = Questions(cfg, args.max_objects, text=args.image == "text")
    val = [s for i in range(0, args.val, 32) for s in questions.draw(VAL_SEED, i, 32)]
    val_one = [s for i in range(4) for s in questions.draw(VAL_ONE_SEED, i, 32, max_objects=1)]
    if images is not None:
        images.register(val + val_one)
    by_type = defaultdict(list)
    for s in val:
        by_type[answer_type(s.answer)].append(s.answer.strip())
    prior_by_type = {t: round(Counter(a).most_common(1)[0][1] / len(a), 3) for t, a in sorted(by_type.items())}
    prior = round(sum(Counter(a).most_common(1)[0][1] for a in by_type.values()) / len(val), 3)
    print(f"val {len(val)} questions, types {dict(Counter(answer_type(s.answer) for s in val))}, "
          f"prior {prior} {prior_by_type}", flush=True)

    rates = {g: args.lr for g in ("queries", "projectors", "llm", "region")}
    stage = next((s for s in cfg.training.stages if not s.decoder_losses), cfg.training.stages[0])
    stage = stage.model_copy(update={"lr": rates, "warmup_steps": args.warmup, "train_llm": "full", "train_vision": True})
    system.train()
    set_trainable(system, stage, {})
    opt = build_optimizer(system, stage, cfg.training.weight_decay)
    sched = build_scheduler(opt, stage)
    params = [p for p in system.parameters() if p.requires_grad]

    @torch.no_grad()
    def score(samples) -> tuple[float, dict[str, float]]:
        system.eval()
        hits = defaultdict(list)
        for i in range(0, len(samples), 32):
            rows = samples[i:i + 32]
            inputs = on(device, model_inputs(collate(processor, rows).inputs))
            pred = system.model(**inputs).logits[:, :-1].argmax(-1)
            labels = inputs["labels"][:, 1:]
            right = ((pred == labels) | (labels == -100)).all(-1)
            for s, ok in zip(rows, right, strict=True):
                hits[answer_type(s.answer)].append(bool(ok))
        system.train()
        every = [x for v in hits.values() for x in v]
        return round(float(np.mean(every)), 3), {t: round(float(np.mean(v)), 3) for t, v in sorted(hits.items())}

    if args.image == "probe":  # image tokens: a learned linear map of the fixed probe's per-patch predictions
        encode = SuperLinkModel.encode_images

        def probe_tokens(self, pixel_values):
            with torch.no_grad():
                _, tokens = encode(self, pixel_values)
                labels = torch.sigmoid(self.dense_probe(tokens))  # (N_img, P, L)
            return labels, self.controlled_images(labels)

    t0, losses, history = time.perf_counter(), [], []
    result: dict = {}
    for step in range(-args.pretrain_dense, args.steps):
        if step == 0 and args.freeze_image:  # the image side is fixed from here on
            for name, p in system.model.named_parameters():
                if ".vision_tower." in name or is_connector("model." + name) or name.startswith("dense_probe."):
                    p.requires_grad_(False)
            probe = None  # no probe loss on a fixed image side
            if args.image == "probe":
                SuperLinkModel.encode_images = probe_tokens
        allowed = next((ts for until, ts in schedule if step < until), types)
        seed = TRAIN_SEED if step >= 0 else PRETRAIN_SEED  # pre-training scenes are their own draw
        cap = next((c for until, c in objects_schedule if step < until), args.max_objects) if step >= 0 else args.max_objects
        rows = batch if step >= 0 or args.pretrain_batch is None else args.pretrain_batch
        samples = questions.draw(seed, abs(step), rows, allowed, args.balanced, cap)
        if images is not None:
            images.register(samples)
        out = system.model(**on(device, model_inputs(collate(processor, samples).inputs)))
        # With model.dense_probe the image tokens are also supervised per patch (router.loss.dense_probe_loss);
        # during --pretrain-dense (negative steps) that is the only loss.
        dense = dense_probe_loss(system.model, out.image_features, samples) if probe is not None and images is None and args.image != "text" else None
        loss = probe.weight * dense if step < 0 else out.loss if dense is None else out.loss + probe.weight * dense
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.training.max_grad_norm or 1.0)
        opt.step()
        sched.step()
        if step < 0:
            if (step + 1) % args.eval_every == 0:
                print(f"pretrain-dense step {step + 1 + args.pretrain_dense} probe loss {float(dense.detach()):.3f}", flush=True)
            continue
        losses.append(float(loss.detach()))
        out_of_time = args.max_minutes is not None and time.perf_counter() - t0 > 60 * args.max_minutes
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps or out_of_time:
            acc, per = score(val)
            one, one_per = score(val_one)
            history.append({"step": step + 1, "acc": acc, "acc_one_object": one, **{f"acc.{t}": v for t, v in per.items()},
                            **{f"acc_one_object.{t}": v for t, v in one_per.items()}})
            print(f"step {step + 1} loss {np.mean(losses[-args.eval_every:]):.3f} acc {acc} {per} one-object {one} "
                  f"{one_per} ({time.perf_counter() - t0:.0f}s)", flush=True)
            result = {"steps": step + 1, "acc": acc, "acc_by_type": per, "acc_one_object": one,
                      "acc_one_object_by_type": one_per}
        if out_of_time:
            print(f"--max-minutes {args.max_minutes}: stopped after step {step + 1} of {args.steps}", flush=True)
            break
    result.update({"config": args.config, "image": args.image, "types": sorted(types), "schedule": args.schedule,
                   "max_objects": args.max_objects, "objects_schedule": args.objects_schedule, "balanced": args.balanced,
                   "pretrain_dense": args.pretrain_dense, "pretrain_batch": args.pretrain_batch or batch,
                   "freeze_image": args.freeze_image, "init": args.init,
                   "dense_probe": cfg.model.dense_probe is not None and images is None, "batch": batch, "lr": args.lr,
                   "device": str(device), "max_minutes": args.max_minutes,
                   "prior": prior, "prior_by_type": prior_by_type, "train_s": round(time.perf_counter() - t0, 1),
                   "history": history})
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
