"""On a CUDA machine: every route end to end and a bf16 training step, with nothing moved by hand.

`pytest -m gpu` (bench/device.sh runs it). The pipeline is placed by its own `device: auto` setting;
requests arrive as PNG bytes and samples as numpy, so any input a stage forgets to move fails here.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Request

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ANSWERS = {
    "DET": "the stars [DET].",
    "SEG": "the circles [SEG].",
    "GRD": "the square [GRD].",
    "POSE": "the squares [POSE].",
    "GEN": "a red circle [GEN].",
    "EDIT": "the star blue [EDIT].",
}


@pytest.fixture(scope="module")
def gpu_pipeline():
    torch.manual_seed(0)
    pipe = Pipeline.from_pretrained("tiny")  # device: auto -> cuda, dtype: auto -> bf16
    assert {p.device.type for p in pipe.system.parameters()} == {"cuda"}
    return pipe


@pytest.fixture(scope="module")
def png() -> bytes:
    from shapesworld.scene import render, sample_scene

    buf = io.BytesIO()
    Image.fromarray(render(sample_scene(np.random.default_rng(3), 96))).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("route", list(ANSWERS))
def test_route_on_gpu(gpu_pipeline, png, route):
    gpu_pipeline.logits_hook = forced_answer_hook(gpu_pipeline.processor.tokenizer, [ANSWERS[route]])
    try:
        resp = gpu_pipeline(Request(images=[png], instruction="go", options={"score_threshold": 0.0, "steps": 2, "seed": 1}))
    finally:
        gpu_pipeline.logits_hook = None
    assert resp.errors == [] and resp.routes == [route]
    items = resp.detections + resp.keypoints + resp.images
    assert items and all(i.route == route for i in items)


def test_compound_request_on_gpu(gpu_pipeline, png):
    gpu_pipeline.logits_hook = forced_answer_hook(gpu_pipeline.processor.tokenizer, [" ".join(ANSWERS.values())])
    try:
        resp = gpu_pipeline(Request(images=[png], instruction="all", options={"score_threshold": 0.0, "steps": 2}))
    finally:
        gpu_pipeline.logits_hook = None
    assert resp.errors == [] and resp.routes == list(ANSWERS)


def test_training_steps_on_gpu_with_bf16_autocast(tmp_path):
    """training.train on CUDA (it places the system itself) with mixed_precision bf16."""
    import yaml

    from router.config import load_config
    from training.train import train

    cfg = load_config("tiny").model_dump(mode="json")
    cfg["training"].update(batch_size=6, grad_accum=1, mixed_precision="bf16", eval_every=0, save_every=0,
                           stages=[{"name": "s", "steps": 2, "train_llm": "lora"}])  # fmt: skip
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = train(path, tmp_path / "run")
    assert result["steps"] == 2 and np.isfinite(result["last"]["total"])


def test_fsdp_training_under_torchrun_on_gpu(tmp_path):
    """training.parallel fsdp over one rank (torchrun --nproc_per_node 1): nccl all-gathers and reduce-scatters,
    bf16 FSDP mixed precision on CUDA, a sharded checkpoint written, resumed and written again."""
    run_fsdp_twice(tmp_path)


def run_fsdp_twice(tmp_path):
    """Two torchrun launches: 2 steps (the second in the sharded LoRA stage), then --resume to step 3."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from router.config import load_config

    cfg = load_config("tiny").model_dump(mode="json")
    cfg["training"].update(batch_size=2, mixed_precision="bf16", parallel="fsdp", eval_every=0, save_every=0,
                           task_weights={"vqa": 1.0, "grounding": 1.0, "generation": 1.0},
                           stages=[{"name": "heads", "steps": 1, "train_llm": "frozen"},
                                   {"name": "lora", "steps": 2, "train_llm": "lora"}])  # fmt: skip
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = []
    for extra in (["--max-steps", "2"], ["--resume"]):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "training.train", str(path), str(tmp_path / "run"), *extra]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [r["steps"] for r in results] == [2, 3] and all(r["sharded"] for r in results)
    assert np.isfinite(results[-1]["last"]["total"]) and results[-1]["model"]
