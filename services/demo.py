"""`superlink demo`: the shipped model on a handful of ShapesWorld scenes, pictures and JSON out.

Each scene goes scene -> processor -> batched routed generation -> link events -> decoders ->
Response; the demo writes `NN_<task>.png` (results drawn; generated / edited images beside their
source) and `NN_<task>.json` (instruction, reference answer, response) per scene, plus
`summary.json`, and prints a readable summary.

Without a trained checkpoint (checkpoints/<model>/ absent) it falls back to the random-weight
`tiny` preset and says so first. A random model rarely emits routing tokens, so in that mode the
ShapesWorld reference answer is teacher-forced through `generate` (forced_answer_hook): routing
tokens then fire for real, their queries run through the LLM, and the decoders answer from those
link states, which shows the whole path, though the pictures mean nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluation.suite import region_prompt
from router.assets import shipped_checkpoint
from router.pipeline import Pipeline, forced_answer_hook
from router.samples import TaskSample
from router.schemas import Options, Request, Response
from services.draw import annotate
from shapesworld.tasks import make_sample

# (task, seed): fixed scenes, chosen to cover every route, native boxes and polygons, region prompts (a box and a
# scribble) and a compound request.
DEMO_SCENES: tuple[tuple[str, int], ...] = (
    ("detection", 3), ("segmentation", 5), ("grounding", 2), ("keypoints", 7), ("region", 1),
    ("native_detection", 4), ("caption", 6), ("vqa", 8), ("generation", 9), ("editing", 11), ("compound", 12),
    ("polygon", 14), ("scribble", 14),
)
DEMO_SEED = 7_000_000  # apart from the train / val / test split seeds
FALLBACK_PRESET = "tiny"
MAX_NEW_TOKENS = 96


@dataclass
class DemoModel:
    name: str  # what Pipeline.from_pretrained loads
    trained: bool  # False: random weights, answers are teacher-forced
    note: str  # shown at the top of the output


def resolve_model(model: str) -> DemoModel:
    """A saved folder or a shipped checkpoint is used as is; anything else falls back to random weights."""
    if Path(model).is_dir():
        return DemoModel(model, True, f"model: folder {model}")
    ckpt = shipped_checkpoint(model)
    if ckpt is not None:
        return DemoModel(str(ckpt), True, f"model: {model} (trained checkpoint {ckpt})")
    return DemoModel(FALLBACK_PRESET, False, (
        f"NOTE: no trained checkpoint for {model!r} (expected checkpoints/{model}/superlink.yaml), so this demo uses "
        f"the RANDOM-WEIGHT {FALLBACK_PRESET!r} preset. Its answers are the ShapesWorld reference answers "
        "TEACHER-FORCED through generation: routing tokens fire and the decoders run on real link states, but the "
        "weights are untrained, so boxes, masks and images are meaningless. Train with "
        "`superlink train configs/shapes.yaml --out checkpoints/shapes` for the real thing."
    ))  # fmt: skip


def demo_samples(image_size: int, location_bins: int, tasks: Sequence[str] | None = None) -> list[TaskSample]:
    """The demo scenes (those of `tasks` only, when given), drawn at the model's image size and location bins."""
    known = [t for t, _ in DEMO_SCENES]
    unknown = sorted(set(tasks or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown demo tasks {unknown}; accepted: {known}")
    return [make_sample(task, np.random.default_rng([DEMO_SEED, seed]), image_size, location_bins)
            for task, seed in DEMO_SCENES if tasks is None or task in tasks]


def demo_request(sample: TaskSample, k: int) -> Request:
    images = [Image.fromarray(sample.image)] if sample.image is not None else []
    return Request(images=images, instruction=sample.instruction, regions=[region_prompt(r) for r in sample.regions],
                   options=Options(max_new_tokens=MAX_NEW_TOKENS, seed=k))


def write_scene(out: Path, k: int, sample: TaskSample, response: Response) -> Path:
    """NN_task.png and NN_task.json for one scene; returns the PNG path."""
    stem = out / f"{k:02d}_{sample.task}"
    annotate(sample.image, response, [region_prompt(r) for r in sample.regions]).save(stem.with_suffix(".png"))
    record = {"task": sample.task, "instruction": sample.instruction, "reference_answer": sample.answer,
              "regions": [region_prompt(r).model_dump(mode="json") for r in sample.regions],
              "response": response.model_dump(mode="json")}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return stem.with_suffix(".png")


def describe(k: int, sample: TaskSample, response: Response) -> str:
    parts = [f"{len(response.detections)} boxes" if response.detections else "",
             f"{len(response.polygons)} polygons" if response.polygons else "",
             f"{sum(d.mask is not None for d in response.detections)} masks" if response.detections else "",
             f"{len(response.keypoints)} poses" if response.keypoints else "",
             f"{len(response.images)} images" if response.images else "",
             f"{len(response.errors)} errors" if response.errors else ""]
    routes = " ".join(f"[{r}]" for r in response.routes) or "none"
    return (f"{k:02d} {sample.task:<16} {sample.instruction.replace(chr(10), ' ')}\n"
            f"   -> {response.text}\n   routes: {routes}; {', '.join(p for p in parts if p) or 'text only'}")


def run_demo(out: Path, model: str = "shapes", tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo scenes (all, or those of `tasks`) through `model`; write pictures + JSON under `out`."""
    t0 = time.perf_counter()
    chosen = resolve_model(model)
    print(chosen.note, flush=True)
    pipe = Pipeline.from_pretrained(chosen.name)
    samples = demo_samples(pipe.config.training.image_size, pipe.config.model.vocab.location_bins, tasks)
    if not chosen.trained:
        pipe.logits_hook = forced_answer_hook(pipe.system.model.tokenizer, [s.answer for s in samples])
    try:
        responses = pipe([demo_request(s, k) for k, s in enumerate(samples)])
    finally:
        pipe.logits_hook = None
    out.mkdir(parents=True, exist_ok=True)
    pngs = [write_scene(out, k, s, r) for k, (s, r) in enumerate(zip(samples, responses, strict=True))]
    for k, (s, r) in enumerate(zip(samples, responses, strict=True)):
        print(describe(k, s, r))
    summary = {"model": chosen.name, "trained": chosen.trained, "teacher_forced": not chosen.trained,
               "scenes": len(samples), "pngs": [str(p) for p in pngs], "wall_s": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(pngs)} annotated PNGs and JSON responses to {out} in {summary['wall_s']} s")
    return summary
