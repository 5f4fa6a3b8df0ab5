"""Dense supervision of the image tokens: ShapesWorld's per-pixel labels, pooled to the patch grid, train a
linear probe on the projected patch features, and its gradient reaches the vision tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllm.config import DenseProbeConfig
from router.loss import collate, dense_targets, joint_loss
from router.system import build_system
from shapesworld.constants import COLORS, KINDS
from shapesworld.scene import CENTRE_RADIUS, DENSE_LABELS, sample_scene
from shapesworld.tasks import make_sample


def _samples(tasks: list[str], seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [make_sample(t, rng, image_size=128, location_bins=32) for t in tasks]


def test_dense_labels_cover_each_object_with_its_kind_and_colour():
    scene = sample_scene(np.random.default_rng(3))
    labels = scene.dense_labels()
    assert labels.shape == (128, 128, len(DENSE_LABELS))
    for k, o in enumerate(scene.objects):
        visible = scene.id_map == k + 1
        assert labels[visible, KINDS.index(o.kind)].all()
        assert labels[visible, len(KINDS) + list(COLORS).index(o.color)].all()
    background = scene.id_map == 0
    assert labels[background, :-1].sum() == 0  # nothing but centres on the background
    assert (labels[..., : len(KINDS)].sum(-1) == (~background)).all()  # one kind per object pixel
    disk = np.pi * (CENTRE_RADIUS * 128) ** 2
    assert labels[..., -1].sum() <= len(scene.objects) * disk * 1.2
    for o in scene.objects:
        assert labels[int(o.center[1]), int(o.center[0]), -1] == 1.0


def test_dense_targets_pool_to_the_patch_grid_and_skip_images_without_scenes():
    samples = _samples(["vqa", "caption"], seed=1)
    samples[1].scene = None  # e.g. a COCO or LLaVA row: no dense labels
    targets, have = dense_targets(samples, grid=4)
    assert targets.shape == (2, 16, len(DENSE_LABELS)) and have.tolist() == [True, False]
    full = torch.from_numpy(samples[0].scene.dense_labels())
    # patch (row 1, column 2) of a 4 x 4 grid covers pixels [32, 64) x [64, 96)
    assert torch.allclose(targets[0, 1 * 4 + 2], full[32:64, 64:96].mean((0, 1)))
    assert targets[1].abs().sum() == 0


@pytest.fixture(scope="module")
def probed(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.model.dense_probe = DenseProbeConfig(labels=len(DENSE_LABELS), weight=0.5)
    torch.manual_seed(0)
    return build_system(cfg, decoders=["detector"])


def test_probe_loss_joins_the_total_and_trains_the_vision_tower(probed):
    system, processor = probed
    system.zero_grad(set_to_none=True)
    out = joint_loss(system, collate(processor, _samples(["vqa", "caption", "generation"], seed=2)), decoders=False)
    assert "dense" in out.parts and torch.isfinite(out.parts["dense"])
    assert torch.isclose(out.total, out.parts["lm"] + 0.5 * out.parts["dense"])
    out.parts["dense"].backward()
    assert system.model.dense_probe.weight.grad.abs().sum() > 0
    vision = [p for n, p in system.model.named_parameters() if ".vision_tower." in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision), "no gradient reached the vision tower"


def test_probe_without_labels_adds_nothing(probed):
    system, processor = probed
    samples = _samples(["vqa"], seed=5)
    samples[0].scene = None
    out = joint_loss(system, collate(processor, samples), decoders=False)
    assert out.parts["dense"].item() == 0.0


def test_probe_learns_the_labels(probed):
    """A few steps on the probe and the vision tower alone drive the loss down: the labels are learnable."""
    system, processor = probed
    params = [p for n, p in system.model.named_parameters() if "dense_probe" in n or ".vision_tower." in n
              or "multi_modal_projector" in n]
    opt = torch.optim.Adam(params, lr=3e-3)
    batch = collate(processor, _samples(["vqa"] * 4, seed=7))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = joint_loss(system, batch, decoders=False).parts["dense"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_label_count_mismatch_says_what_to_set(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.model.dense_probe = DenseProbeConfig(labels=3)
    system, processor = build_system(cfg, decoders=["detector"])
    with pytest.raises(ValueError, match=f"set model.dense_probe.labels to {len(DENSE_LABELS)}"):
        joint_loss(system, collate(processor, _samples(["vqa"])), decoders=False)


def test_model_without_probe_has_no_dense_part(tiny_config):
    system, processor = build_system(tiny_config, decoders=["detector"])
    assert system.model.dense_probe is None
    out = joint_loss(system, collate(processor, _samples(["vqa"])), decoders=False)
    assert "dense" not in out.parts


def test_probe_is_saved_and_loaded_with_the_model(probed, tmp_path):
    from mllm.modeling import SuperLinkModel

    system, _ = probed
    system.model.save_pretrained(tmp_path)
    loaded = SuperLinkModel.from_pretrained(tmp_path)
    assert loaded.config.dense_probe == system.model.config.dense_probe
    assert torch.equal(loaded.dense_probe.weight, system.model.dense_probe.weight)
