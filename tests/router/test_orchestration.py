"""Plan / run_decoder / assemble with stand-in decoders (they isolate the orchestration from real models)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from decoders.base import DecoderOutput
from router.bindings import RouteBinding, SuperLinkSystem, perception_projector
from router.pipeline import Pipeline
from router.schemas import Options, Point
from router.stages import GenerationResult, LinkRecord, Prepared

D = 64  # tiny LLM width


class CountDecoder(nn.Module):
    """Stand-in: one prediction per item = number of link vectors whose mean is positive (+ a delay)."""

    def __init__(self, link_dim: int = 8, delay: float = 0.0, fail: bool = False) -> None:
        super().__init__()
        self.link_dim = link_dim
        self.delay = delay
        self.fail = fail
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, batch: torch.Tensor, targets=None) -> DecoderOutput:
        if self.fail:
            raise RuntimeError("stand-in decoder exploded")
        time.sleep(self.delay)
        return DecoderOutput(predictions=[int((row.mean() * self.scale > -1e9).item()) + k for k, row in enumerate(batch)])


def _build(calls, projected, decoder):  # one batch item per call
    return projected, [[i] for i in range(len(calls))]


def _items(pred, calls, decoder):
    return [[Point(route=c.route, phrase=c.phrase, label=c.phrase, point=(float(pred), 0.0))] for c in calls]


def _row(route: str, decoder: str) -> RouteBinding:
    return RouteBinding(route=route, decoder=decoder, projector=perception_projector, build_batch=_build, to_items=_items)


def _pipeline(tiny_config, decoders: dict[str, nn.Module], table: dict[str, RouteBinding]) -> Pipeline:
    routes = {**tiny_config.model.routes, "COUNT": 2, "SLOW": 2, "BOOM": 2}
    cfg = tiny_config.model_copy(deep=True, update={"model": tiny_config.model.model_copy(update={"routes": routes})})
    system = SuperLinkSystem(None, decoders, table, llm_hidden=D)
    return Pipeline(cfg, system, processor=None)


def _prepared(i: int, options: Options | None = None) -> Prepared:
    img = np.zeros((20, 30, 3), np.uint8)
    return Prepared(i, "count things", [img], [], options or Options(), [])


def _gen(i: int, routes: list[str]) -> GenerationResult:
    rng = np.random.default_rng(i)
    links = [LinkRecord(r, 3 * k, f"thing{k}", rng.standard_normal((2, D)).astype(np.float32)) for k, r in enumerate(routes)]
    text = ", ".join(f"thing{k} [{r}]" for k, r in enumerate(routes))
    return GenerationResult(i, f"Sure: {text}.", links)


@pytest.fixture()
def pipe(tiny_config):
    decoders = {"counter": CountDecoder(), "slow": CountDecoder(delay=0.3), "broken": CountDecoder(fail=True)}
    table = {"COUNT": _row("COUNT", "counter"), "SLOW": _row("SLOW", "slow"), "BOOM": _row("BOOM", "broken")}
    return _pipeline(tiny_config, decoders, table)


def test_plan_groups_events_by_decoder_across_requests(pipe):
    prepared = [_prepared(0), _prepared(1)]
    gens = [_gen(0, ["COUNT", "SLOW"]), _gen(1, ["COUNT", "COUNT"])]
    plan = pipe.plan(prepared, gens)
    assert sorted(plan) == ["counter", "slow"]
    assert [(c.request, c.event) for c in plan["counter"]] == [(0, 0), (1, 0), (1, 1)]
    assert plan["slow"][0].states.shape == (2, D)


def test_failing_decoder_is_a_part_error_and_the_rest_arrives(pipe):
    prepared = [_prepared(0)]
    gens = [_gen(0, ["COUNT", "BOOM", "COUNT"])]
    results = pipe.run_decoders(pipe.plan(prepared, gens))
    (resp,) = pipe.assemble(prepared, gens, results, {"total": 1.0})
    assert resp.routes == ["COUNT", "BOOM", "COUNT"]
    assert [p.phrase for p in resp.points] == ["thing0", "thing2"]
    assert len(resp.errors) == 1 and resp.errors[0].kind == "decoder_failed"
    assert resp.errors[0].route == "BOOM" and "exploded" in resp.errors[0].message
    assert resp.text == "Sure: thing0 (1 result), thing1 (decoder failed), thing2 (1 result)."
    assert "[BOOM]" in resp.raw_text


def test_one_forward_per_route_per_batch(pipe, monkeypatch):
    calls_seen = []
    dec = pipe.system.decoders["counter"]
    orig = dec.forward
    monkeypatch.setattr(dec, "forward", lambda batch, targets=None: calls_seen.append(batch.shape) or orig(batch))
    prepared = [_prepared(0), _prepared(1), _prepared(2)]
    gens = [_gen(0, ["COUNT"]), _gen(1, ["COUNT", "COUNT"]), _gen(2, [])]
    results = pipe.run_decoders(pipe.plan(prepared, gens))
    assert calls_seen == [torch.Size([3, 2, 8])]  # (N calls, Q, link_dim) in one forward
    responses = pipe.assemble(prepared, gens, results, {})
    assert [len(r.points) for r in responses] == [1, 2, 0]
    assert responses[1].points[1].point[0] == 3.0  # prediction k=2 of the batch went back to its owner


def test_timeout_gives_timeout_part_and_keeps_fast_results(pipe):
    prepared = [_prepared(0, Options(timeout_s=0.05))]
    gens = [_gen(0, ["COUNT", "SLOW"])]
    results = pipe.run_decoders(pipe.plan(prepared, gens), timeout_s=0.05)
    (resp,) = pipe.assemble(prepared, gens, results, {})
    assert [e.kind for e in resp.errors] == ["timeout"]
    assert len(resp.points) == 1


def test_unbound_route_is_route_not_deployed(pipe):
    prepared = [_prepared(0)]
    gens = [_gen(0, ["DET"])]  # declared by the model, but no decoder in this pipeline
    results = pipe.run_decoders(pipe.plan(prepared, gens))
    (resp,) = pipe.assemble(prepared, gens, results, {})
    assert resp.errors[0].kind == "route_not_deployed"


def test_independent_decoders_run_concurrently(tiny_config):
    decoders = {"a": CountDecoder(delay=0.3), "b": CountDecoder(delay=0.3), "c": CountDecoder(delay=0.3)}
    table = {"COUNT": _row("COUNT", "a"), "SLOW": _row("SLOW", "b"), "BOOM": _row("BOOM", "c")}
    pipe = _pipeline(tiny_config, decoders, table)
    plan = pipe.plan([_prepared(0)], [_gen(0, ["COUNT", "SLOW", "BOOM"])])
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    pipe.run_decoders(plan, timings=timings)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.75, f"three 0.3 s decoders took {elapsed:.2f} s: not concurrent"
    assert set(timings) == {"a", "b", "c"}


def test_process_workers_give_the_same_results_concurrently(tiny_config):
    decoders = {"a": CountDecoder(delay=0.3), "b": CountDecoder(delay=0.3), "c": CountDecoder(delay=0.3)}
    table = {"COUNT": _row("COUNT", "a"), "SLOW": _row("SLOW", "b"), "BOOM": _row("BOOM", "c")}
    pipe = _pipeline(tiny_config, decoders, table)
    plan = pipe.plan([_prepared(0)], [_gen(0, ["COUNT", "SLOW", "BOOM"])])
    want = pipe.run_decoders(plan, concurrent=False)
    pipe.config.runtime.decoder_concurrency = "process"
    try:
        pipe.run_decoders(plan)  # starts the forked workers
        t0 = time.perf_counter()
        got = pipe.run_decoders(plan)
        elapsed = time.perf_counter() - t0
    finally:
        pipe.close()
    assert elapsed < 0.75, f"three 0.3 s decoders in worker processes took {elapsed:.2f} s"
    assert {k: [r.items for r in v] for k, v in got.items()} == {k: [r.items for r in v] for k, v in want.items()}
