"""Ray Serve deployments: thin wrappers over the plain engines in services/engines.py.

    Ingress (FastAPI, CPU) --front--> MLLM (prepare + batched generate + plan)
            \\--calls--> one deployment per decoder (@serve.batch over DecoderEngine.run_batch)
    The ingress assembles the Response itself with a model-free Pipeline (no weights loaded).

Each deployment builds its own slice of the system: the MLLM loads the model without
decoders, a decoder deployment loads only its decoder, the ingress loads neither.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from router.schemas import Request, Response
from router.stages import DecoderCall, DecoderResult
from services.config import ServeConfig
from services.engines import (
    DecoderEngine,
    MLLMEngine,
    Planned,
    Rejected,
    batch_cancellable,
    engine_routes,
    in_thread_cancellable,
    make_engine,
    not_deployed,
)
from services.http import create_app
from services.observability import RayMetrics, configure_logging


@serve.deployment(name="mllm")
class MLLMDeployment:
    """prepare + generate + plan; concurrent callers share one batched generate."""

    def __init__(self, config: ServeConfig):
        configure_logging()
        engine = make_engine(config, decoders=[], with_model=True, placement=config.mllm.placement())
        self.engine = MLLMEngine(engine, RayMetrics())
        batching = config.mllm.batching
        self.batching = batching.enabled
        self.front_batched.set_max_batch_size(batching.max_batch_size)
        self.front_batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def front(self, requests: list[Request]) -> Planned | Rejected:
        if not self.batching:
            return await in_thread_cancellable(self.engine.front, requests)
        gave_up = threading.Event()  # set when this caller is cancelled (its timeout passed)
        try:
            return await self.front_batched(requests, gave_up)
        except asyncio.CancelledError:
            gave_up.set()
            raise

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def front_batched(self, callers: list[list[Request]], gave_up: list[threading.Event]) -> list[Planned | Rejected]:
        return await batch_cancellable(self.engine.front_batch, callers, gave_up)

    def check_health(self) -> None:
        if self.engine.pipeline.system.model is None:
            raise RuntimeError("the MLLM deployment has no model loaded")


@serve.deployment(name="decoder")
class DecoderDeployment:
    """One decoder; `__call__` batches calls from many ingress requests into one decoder run."""

    def __init__(self, config: ServeConfig, decoder_name: str):
        configure_logging()
        placement = config.decoders[decoder_name].placement()
        engine = make_engine(config, decoders=[decoder_name], with_model=False, placement=placement)
        self.engine = DecoderEngine(engine, decoder_name, RayMetrics())
        batching = config.decoders[decoder_name].batching
        self.batching = batching.enabled
        self.run_batched.set_max_batch_size(batching.max_batch_size)
        self.run_batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def __call__(self, calls: list[DecoderCall]) -> list[DecoderResult]:
        if not self.batching:
            return (await in_thread_cancellable(self.engine.run_batch, [calls]))[0]
        gave_up = threading.Event()  # a batch stops early only when every caller in it gave up
        try:
            return await self.run_batched(calls, gave_up)
        except asyncio.CancelledError:
            gave_up.set()
            raise

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def run_batched(self, call_lists: list[list[DecoderCall]], gave_up: list[threading.Event]) -> list[list[DecoderResult]]:
        return await batch_cancellable(self.engine.run_batch, call_lists, gave_up)

    def stats(self) -> dict[str, Any]:
        return {**self.engine.stats(), "batching": self.batching}

    def check_health(self) -> None:
        if self.engine.name not in self.engine.pipeline.system.decoders:
            raise RuntimeError(f"decoder {self.engine.name!r} is not loaded in this replica")


class RayBackend:
    """The ingress side of the stages: remote MLLM and decoders, local assembly."""

    def __init__(self, assembler: Any, mllm: DeploymentHandle, decoders: dict[str, DeploymentHandle]):
        self.assembler = assembler  # a model-free Pipeline: assemble needs only the config
        self.mllm = mllm
        self.decoders = decoders
        self.routes = engine_routes(assembler)

    async def front(self, requests: list[Request]) -> Planned | Rejected:
        return await self.mllm.front.remote(requests)

    async def run_decoder(self, name: str, calls: list[DecoderCall]) -> list[DecoderResult]:
        if name not in self.decoders:
            return not_deployed(name, calls, self.decoders)
        return await self.decoders[name].remote(calls)

    async def assemble(self, planned: Planned, results: dict[str, list[Any]], timings: dict[str, float]) -> list[Response]:
        return await asyncio.to_thread(self.assembler.assemble, planned.prepared, planned.generations, results, timings)

    async def describe(self) -> dict[str, Any]:
        names = list(self.decoders)
        stats = await asyncio.gather(*(self.decoders[n].stats.remote() for n in names))
        return {"routes": dict(self.routes), "decoders": dict(zip(names, stats, strict=True)), "backend": "ray-serve"}


@serve.deployment(name="ingress")
@serve.ingress()
class IngressDeployment:
    """The HTTP entry point: the FastAPI app of services/http.py over a RayBackend."""

    def __init__(self, config: ServeConfig, mllm: DeploymentHandle, decoders: dict[str, DeploymentHandle]):
        configure_logging()
        self.config = config
        self.backend = RayBackend(make_engine(config, decoders=[], with_model=False), mllm, decoders)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.backend, self.config.http, metrics=RayMetrics(), behind_ray_proxy=True)

    def check_health(self) -> None:
        if not self.backend.routes:
            raise RuntimeError("the ingress knows no deployed routes")
