"""The joint loss: decoder gradients flow back through the link states into LoRA and the query tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllm.config import LoraConfig
from router.loss import collate, joint_loss, route_targets
from router.system import build_system
from shapesworld.tasks import make_sample


@pytest.fixture(scope="module")
def lora_system(tiny_config):
    from mllm.lora import apply_lora

    torch.manual_seed(0)
    system, processor = build_system(tiny_config, decoders=["detector"])
    apply_lora(system.model, LoraConfig(r=4, alpha=8))
    return system, processor


def _samples(tasks: list[str], seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [make_sample(t, rng, image_size=128, location_bins=32) for t in tasks]


def test_decoder_only_loss_reaches_lora_and_query_tables(lora_system):
    system, processor = lora_system
    system.zero_grad(set_to_none=True)
    out = joint_loss(system, collate(processor, _samples(["detection", "grounding"], seed=4)))
    assert {"lm", "DET", "GRD"} <= set(out.parts)
    assert torch.isclose(out.total, out.parts["lm"] + out.parts["DET"] + out.parts["GRD"])
    out.parts["DET"].backward()  # decoder loss only: no LM term
    named = dict(system.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_B" in n and ".language_model." in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values()), "no gradient reached LoRA"
    q = system.model.queries["DET"].weight.grad
    assert q is not None and q.abs().sum() > 0, "no gradient reached the [DET] query table"
    assert system.projectors["DET"][0].weight.grad.abs().sum() > 0
    assert system.model.queries["GEN"].weight.grad is None  # GEN absent: its table is untouched


def test_loss_weights_scale_decoder_parts(lora_system):
    system, processor = lora_system
    batch = collate(processor, _samples(["detection"], seed=1))
    with torch.no_grad():
        half = joint_loss(system, batch, {"DET": 0.5})
    assert torch.isclose(half.total, half.parts["lm"] + 0.5 * half.parts["DET"], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown routes"):
        joint_loss(system, batch, {"COUNT": 1.0})


def test_lm_only_loss_skips_the_decoders(lora_system):
    system, processor = lora_system
    batch = collate(processor, _samples(["detection", "grounding"], seed=2))
    system.zero_grad(set_to_none=True)
    out = joint_loss(system, batch, decoders=False)
    assert set(out.parts) == {"lm"} and torch.equal(out.total, out.parts["lm"])
    out.total.backward()
    decoder_grads = [p.grad for n, p in system.named_parameters() if n.startswith("decoders.")]
    assert decoder_grads and all(g is None for g in decoder_grads)
    system.zero_grad(set_to_none=True)


def test_route_targets_must_match_the_answer(lora_system):
    (sample,) = _samples(["detection"], seed=2)
    index = torch.tensor([[0, 5]] * (len(sample.targets) + 1))
    with pytest.raises(ValueError, match="groups but the sample has"):
        route_targets([sample], "DET", index)


def test_skip_projector_keeps_phrases_apart_where_the_relu_mlp_collapses_them():
    """Random link states (distinct phrases) through each perception projector at initialisation."""
    from router.bindings import PROJECTORS

    torch.manual_seed(0)
    states = torch.randn(40, 4, 192)  # (N, Q, D)

    def mean_cos(kind: str) -> float:
        v = torch.nn.functional.normalize(PROJECTORS[kind](192, 64)(states).mean(1), dim=-1)
        return float((v @ v.T)[~torch.eye(40, dtype=torch.bool)].mean())

    assert mean_cos("relu_mlp") > 0.5  # the collapse the skip path removes
    assert mean_cos("skip_mlp") < 0.2


def test_link_projector_config_picks_the_perception_projector(tiny_config):
    from router.bindings import SkipProjector
    from router.system import build_system

    system, _ = build_system(tiny_config.model_copy(update={"link_projector": "skip_mlp"}), with_model=False)
    assert all(isinstance(system.projectors[r], SkipProjector) for r in ("DET", "SEG", "GRD", "POSE"))
    assert not isinstance(system.projectors["GEN"], SkipProjector)


def test_link_health_reports_each_routes_spread_and_pull(lora_system):
    system, processor = lora_system
    out = joint_loss(system, collate(processor, _samples(["detection", "detection", "grounding"], seed=2)), health=True)
    assert -1.0 <= out.health["link/DET/cos"] <= 1.0
    assert out.health["link/DET/grad"] > 0 and out.health["link/GRD/grad"] > 0
    plain = joint_loss(system, collate(processor, _samples(["detection"], seed=2)))
    assert plain.health == {}
