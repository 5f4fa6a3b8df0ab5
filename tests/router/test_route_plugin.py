"""A route declared outside the package (tests/plugins/count_route.py) is config lines away: it trains,
answers in-process with its own item type, saves and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from router.config import SuperLinkConfig
from router.loss import collate, joint_loss
from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Request

PLUGIN = "tests.plugins.count_route"


def count_config(base: SuperLinkConfig) -> SuperLinkConfig:
    """`base` plus the three config lines that enable [COUNT]."""
    data = base.model_dump(mode="json")
    data["modules"] = [PLUGIN]
    data["model"]["routes"] = {**data["model"]["routes"], "COUNT": 2}
    data["decoders"]["counter"] = {"kind": "counter", "hidden": 16}
    return SuperLinkConfig.model_validate(data)


@pytest.fixture(scope="module")
def count_pipe(tiny_config):
    torch.manual_seed(0)
    return Pipeline.from_config(count_config(tiny_config), decoders=["counter"])


def test_count_route_trains(count_pipe):
    from tests.plugins.count_route import count_sample

    rng = np.random.default_rng(0)
    batch = collate(count_pipe.processor, [count_sample(rng) for _ in range(4)])
    system = count_pipe.system.train()
    opt = torch.optim.AdamW(system.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        out = joint_loss(system, batch)
        opt.zero_grad()
        out.total.backward()
        if not losses:
            assert system.model.queries["COUNT"].weight.grad.abs().sum() > 0  # the count loss reaches the queries
        opt.step()
        losses.append(out.parts["COUNT"].item())
    system.eval()
    assert losses[-1] < 0.5 * losses[0], losses


def test_count_route_answers_saves_and_loads(count_pipe, scene_png, tmp_path):
    from tests.plugins.count_route import Count

    assert count_pipe.deployed_routes == ["COUNT"]
    request = Request(images=[scene_png], instruction="How many circles?", options={"routes": ["COUNT"]})
    count_pipe.logits_hook = forced_answer_hook(count_pipe.processor.tokenizer, ["Sure, the circles [COUNT]."])
    resp = count_pipe(request)
    assert resp.routes == ["COUNT"] and resp.errors == []
    (part,) = resp.parts
    assert isinstance(part, Count) and part.kind == "count" and part.phrase == "circles" and part.count >= 0
    assert resp.text == "Sure, the circles (1 count)."
    assert resp.detections == [] and resp.points == []  # its own item type, not smuggled through another
    assert resp.model_dump(mode="json")["parts"][0]["count"] == part.count

    saved = count_pipe.save_pretrained(tmp_path / "count")
    assert "tests.plugins.count_route" in (saved / "superlink.yaml").read_text()
    again = Pipeline.from_pretrained(saved, decoders=["counter"])  # the decoders this pipeline holds
    again.logits_hook = forced_answer_hook(again.processor.tokenizer, ["Sure, the circles [COUNT]."])
    assert again(request).parts == resp.parts


def test_count_route_evaluation_hook(count_pipe):
    from evaluation.suite import Scored, route_metrics
    from router.schemas import Response
    from tests.plugins.count_route import Count, count_sample

    sample = count_sample(np.random.default_rng(1))
    n = len(sample.targets[0].boxes)
    resp = Response(text="", raw_text="", parts=[Count(route="COUNT", label="x", count=n + 0.5)])
    assert route_metrics(count_pipe, [Scored("count", sample, resp)]) == {"count_mae": 0.5}


def test_decoders_mapping_names_kinds(tiny_config):
    from mllm.config import ConfigError, validate_mapping

    cfg = count_config(tiny_config)
    assert cfg.decoders.names() == ["detector", "keypoints", "generator", "editor", "counter"]
    assert cfg.decoders.kind_of("counter") == "counter" and cfg.decoders["counter"].hidden == 16
    dumped = cfg.model_dump(mode="json")
    assert dumped["decoders"]["counter"] == {"kind": "counter", "link_dim": 16, "hidden": 16}
    assert SuperLinkConfig.model_validate(dumped) == cfg  # a saved config reads back
    data = tiny_config.model_dump(mode="json")
    for entry, message in [({"hidden": 8}, "give its kind"), ({"kind": "abacus"}, "unknown decoder kind 'abacus'")]:
        with pytest.raises(ConfigError, match=message):
            validate_mapping({**data, "decoders": {**data["decoders"], "extra": entry}}, SuperLinkConfig)
    with pytest.raises(ConfigError, match="cannot import 'no_such_plugin'"):
        validate_mapping({**data, "modules": ["no_such_plugin"]}, SuperLinkConfig)
