"""Devices: every route and a training step with the system on another device than its inputs.

The CPU stand-in for a GPU is tests/fake_device.py: parameters report device "meta" but hold real
data, and any op mixing them with a plain CPU tensor raises, as CUDA would. So a decoder that forgets
to move an input fails here, on a machine without a GPU.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from decoders.detection import DetectionBatch
from mllm.devices import resolve_device, resolve_dtype
from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Request
from services.config import DeploymentConfig
from tests.fake_device import DeviceMismatch, FakeDevice

EVERY_ROUTE = "the stars [DET], the circles [SEG], the square [GRD], the squares [POSE], a red circle [GEN], the star blue [EDIT]."


def _run(pipe: Pipeline, png: bytes):
    pipe.logits_hook = forced_answer_hook(pipe.processor.tokenizer, [EVERY_ROUTE])
    pipe.run_decoders = functools.partial(Pipeline.run_decoders, pipe, concurrent=False)  # the mode is per thread
    try:
        return pipe(Request(images=[png], instruction="all of it", options={"score_threshold": 0.0, "steps": 1, "seed": 0}))
    finally:
        pipe.logits_hook = None
        del pipe.run_decoders


@pytest.fixture(scope="module")
def fresh_pipeline():
    torch.manual_seed(0)
    return Pipeline.from_pretrained("tiny", device="cpu")


def test_every_route_runs_with_the_system_on_another_device(fresh_pipeline, scene_png):
    on_cpu = _run(fresh_pipeline, scene_png)
    with FakeDevice() as dev:
        dev.move(fresh_pipeline.system)
        elsewhere = _run(fresh_pipeline, scene_png)
    assert dev.ops > 1000  # the model, projectors and decoders really ran on the stand-in device
    assert elsewhere.errors == [] and on_cpu.errors == []
    assert elsewhere.routes == ["DET", "SEG", "GRD", "POSE", "GEN", "EDIT"]
    assert {d.route for d in elsewhere.detections} == {"DET", "SEG", "GRD"} and elsewhere.keypoints
    assert len(elsewhere.images) == 2
    # Same numbers as on the CPU: the stand-in computes for real.
    a = np.array([d.box for d in on_cpu.detections])
    b = np.array([d.box for d in elsewhere.detections])
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-3)
    assert [(g.route, g.width, g.height) for g in on_cpu.images] == [(g.route, g.width, g.height) for g in elsewhere.images]


def test_the_stand_in_catches_an_input_left_on_the_cpu(fresh_pipeline):
    """The check can fail: the detector model fed a CPU image while it lives elsewhere raises."""
    decoder = fresh_pipeline.system.decoders["detector"]
    s = decoder.config.image_size
    with FakeDevice() as dev:
        dev.move(decoder)
        text = torch.zeros(1, 1, decoder.link_dim, device=decoder.device)
        mask = torch.ones(1, 1, dtype=torch.bool, device=decoder.device)
        with pytest.raises(DeviceMismatch, match="convolution"):
            decoder.model(torch.zeros(1, 3, s, s), text, mask)
        # and run() moves its inputs itself
        batch = DetectionBatch(torch.zeros(1, 3, s, s), [(s, s)], torch.zeros(1, 1, 4, decoder.link_dim),
                               torch.ones(1, 1, dtype=torch.bool), [["x"]])  # fmt: skip
        assert decoder.run(batch, with_masks=True).boxes.device == decoder.device


def test_a_training_step_runs_with_the_system_on_another_device(tiny_config):
    from router.loss import collate, joint_loss
    from router.system import build_system
    from training.train import batch_samples

    torch.manual_seed(0)
    system, processor = build_system(tiny_config)
    cfg = tiny_config.model_copy(deep=True)
    cfg.training.batch_size = 6
    with FakeDevice() as dev:
        dev.move(system)
        device = next(system.parameters()).device
        batch = collate(processor, batch_samples(cfg, 0, 0, 0))
        batch.inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.inputs.items()}
        out = joint_loss(system, batch, {})
        out.total.backward()
    assert len(out.parts) > 2  # LM and at least two routes' decoders ran
    grads = [p.grad for p in system.parameters() if p.grad is not None]
    assert grads and all(g.device == device for g in grads)


def test_auto_device_and_dtype():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) is None
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="accepted"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")


def test_pipeline_dtype_setting_casts_every_part(tiny_config):
    pipe = Pipeline.from_config(tiny_config, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in pipe.system.parameters()} == {torch.bfloat16}


def test_a_replica_with_gpus_runs_on_its_gpu():
    gpu = DeploymentConfig.model_validate({"ray_actor_options": {"num_gpus": 0.5}})
    cpu = DeploymentConfig.model_validate({"ray_actor_options": {"num_gpus": 0}})
    assert gpu.placement() == ("cuda", "auto") and cpu.placement() == ("cpu", "auto")
    pinned = DeploymentConfig.model_validate({"ray_actor_options": {"num_gpus": 1}, "device": "cuda:0", "dtype": "float16"})
    assert pinned.placement() == ("cuda:0", "float16")
