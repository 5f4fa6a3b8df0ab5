"""The serving logic as plain classes (no Ray): tested with fake engines, wrapped by thin deployments.

    IngressLogic   Request -> Response: limits, per-request timeout, error mapping; talks to a Backend
    Backend        where the stages run: LocalBackend (threads over one in-process Pipeline) or the
                   Ray handles in services/deployments.py
    MLLMEngine     prepare + batched generate + plan; assemble (needs only the config, so the Ray
                   ingress assembles with a model-free Pipeline)
    DecoderEngine  one decoder; run_batch flattens many callers' calls into ONE decoder call

The engine is anything with the Pipeline's stage methods (router/pipeline.py):
prepare, generate, plan, run_decoder, assemble, and a route -> decoder table.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from mllm.images import ImageError, TooManyPixels, load_image
from router.config import import_modules
from router.schemas import Request, Response
from router.stages import Prepared, RequestError, failed
from services.cancel import AllSet, Flag, cancellable
from services.config import HTTPConfig, ServeConfig
from services.limits import public_error
from services.observability import NullMetrics, current_request_id

log = logging.getLogger("superlink")


class ServiceError(Exception):
    """A request the service answers with an HTTP error status and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Planned:
    """What the MLLM stage hands the ingress: plain picklable data, sent back for assembly."""

    prepared: list[Any]
    generations: list[Any]
    plan: dict[str, list[Any]]  # decoder name -> calls
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage


@dataclass(frozen=True)
class Budget:
    """One request's time: `limit` seconds, ending at `deadline` (time.monotonic); `t0` for the total timing."""

    limit: float
    deadline: float
    t0: float

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


@dataclass
class Rejected:
    """The MLLM stage refused the request (the Pipeline raised RequestError): a 4xx, not a failure."""

    message: str


def engine_routes(pipeline: Any) -> dict[str, str]:
    """Route -> decoder name for the routes the pipeline may fire (its deployed routes)."""
    return {r: pipeline.system.table[r].decoder for r in pipeline.deployed_routes}


def make_engine(
    config: ServeConfig,
    decoders: Sequence[str] | None = None,
    with_model: bool = True,
    placement: tuple[str, str] | None = None,
) -> Any:
    """The Pipeline (slice) a process needs, from `engine_factory` or Pipeline.from_pretrained, moved to
    `placement` = (device, dtype) (DeploymentConfig.placement) when given; an engine without `.to` stays put.

    decoders=None loads every decoder; [] none. The routes that may fire are the configured
    ones, whatever this process loads. A preset name builds random weights: seeded, so the
    replicas of one deployment agree (serve a saved folder for weights shared by all deployments).
    """
    if not Path(config.model).is_dir():
        torch.manual_seed(0)
    import_modules({"modules": config.modules})  # routes and decoder kinds declared outside the package
    if config.engine_factory is None:
        from router.pipeline import Pipeline  # lazy: the CPU ingress imports this module and builds no model

        factory: Any = Pipeline.from_pretrained
    else:
        module, _, attr = config.engine_factory.partition(":")
        if not attr:
            raise ValueError(f"engine_factory {config.engine_factory!r} must look like 'package.module:callable'")
        factory = getattr(importlib.import_module(module), attr)
    kwargs: dict[str, Any] = {"decoders": None if decoders is None else list(decoders), "with_model": with_model}
    if placement is not None and config.engine_factory is None:
        kwargs["device"], kwargs["dtype"] = placement  # loaded straight onto its device
    engine = factory(config.model, **kwargs)
    if placement is not None and config.engine_factory is not None and hasattr(engine, "to"):
        engine.to(*placement)
    engine.deployed_routes = list(config.routes)
    return engine


def _split(
    prepared: list[Prepared], generations: list[Any], plan: dict[str, list[Any]], timings: dict[str, float]
) -> Planned:
    """One caller's share of a batched front stage."""
    mine = {p.index for p in prepared}
    gens = [g for g in generations if g.index in mine]
    calls = {name: [c for c in cs if c.request in mine] for name, cs in plan.items()}
    return Planned(prepared, gens, {n: cs for n, cs in calls.items() if cs}, dict(timings))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class MLLMEngine:
    """The MLLM-side stages of one Pipeline; one generate at a time (the model is one device's worth)."""

    def __init__(self, pipeline: Any, metrics: NullMetrics | None = None):
        self.pipeline = pipeline
        self.routes = engine_routes(pipeline)
        self.metrics = metrics or NullMetrics()
        self._lock = threading.Lock()

    def front(self, requests: list[Request], cancel: Flag | None = None) -> Planned | Rejected:
        """prepare -> generate -> plan for one caller's requests; a bad request becomes Rejected."""
        return self.front_batch([requests], cancel)[0]

    def front_batch(self, callers: list[list[Request]], cancel: Flag | None = None) -> list[Planned | Rejected]:
        """Many callers' requests through ONE batched generate; each caller gets back its own part.

        Requests are renumbered across the batch (Prepared.index) so that generations and
        decoder calls can be split back by index; a rejected caller does not hold up the others.
        Setting `cancel` stops the call (Cancelled) at its next module forward, lock released.
        """
        self.metrics.add("superlink_queue_depth", len(callers), stage="mllm")
        try:
            with self._lock, cancellable(cancel):
                out = self._front_isolating(callers)
        finally:
            self.metrics.add("superlink_queue_depth", -len(callers), stage="mllm")
        self.metrics.observe("superlink_batch_size", len(callers), stage="mllm")
        self.metrics.inc("superlink_generated_tokens_total", float(sum(self._tokens(p) for p in out)))
        return out

    def _tokens(self, part: Planned | Rejected) -> int:
        """Tokens generated for one caller (the tokenizer's count of the answer text, words without one)."""
        if isinstance(part, Rejected):
            return 0
        processor = getattr(self.pipeline, "processor", None)
        count = (lambda t: len(processor.tokenizer(t, add_special_tokens=False)["input_ids"])) if processor else (lambda t: len(t.split()))
        return sum(count(g.text) for g in part.generations)

    def _front_isolating(self, callers: list[list[Request]]) -> list[Planned | Rejected]:
        """generate itself may reject (e.g. a prompt too long); then retry callers one by one."""
        try:
            return self._front_together(callers)
        except RequestError as err:
            if len(callers) == 1:
                return [Rejected(str(err))]
            return [self._front_isolating([c])[0] for c in callers]

    def _front_together(self, callers: list[list[Request]]) -> list[Planned | Rejected]:
        t0 = time.perf_counter()
        parts: list[list[Prepared] | Rejected] = []
        flat: list[Prepared] = []
        for requests in callers:
            try:
                prepared = self.pipeline.prepare(requests)
            except RequestError as err:
                parts.append(Rejected(str(err)))
                continue
            prepared = [replace(p, index=len(flat) + i) for i, p in enumerate(prepared)]
            flat += prepared
            parts.append(prepared)
        timings = {"preprocess": _ms(t0)}
        t1 = time.perf_counter()
        generations = self.pipeline.generate(flat) if flat else []
        timings["generate"] = _ms(t1)
        plan = self.pipeline.plan(flat, generations) if flat else {}
        return [part if isinstance(part, Rejected) else _split(part, generations, plan, timings) for part in parts]

    def assemble(self, planned: Planned, results: dict[str, list[Any]], timings: dict[str, float]) -> list[Response]:
        return self.pipeline.assemble(planned.prepared, planned.generations, results, timings)


def _distinct_requests(call_lists: list[list[Any]]) -> list[Any]:
    """Every caller's calls in one list, renumbered so that no two callers share a request index.

    Each caller numbered its requests within its own MLLM batch, so two callers' calls can both say
    request 0; the decoder groups calls by request (one image per request), and would otherwise run
    one caller's phrases on the other's image.
    """
    ids: dict[tuple[int, int], int] = {}
    return [replace(c, request=ids.setdefault((k, c.request), len(ids))) for k, calls in enumerate(call_lists) for c in calls]


class DecoderEngine:
    """One decoder. `run_batch` is the batched part: many callers, one decoder call (one at a time)."""

    def __init__(self, pipeline: Any, decoder_name: str, metrics: NullMetrics | None = None):
        self.pipeline = pipeline
        self.name = decoder_name
        self.metrics = metrics or NullMetrics()
        self._lock = threading.Lock()
        self.batches = 0  # decoder runs
        self.max_batch = 0  # most callers served by one run
        self.calls_total = 0

    def run_batch(self, call_lists: list[list[Any]], cancel: Flag | None = None) -> list[list[Any]]:
        """Flatten every caller's calls into one run_decoder call and split the results back.

        Setting `cancel` (every caller gave up) skips the run, or stops it at its next module
        forward (Cancelled), so an abandoned call never holds the decoder from later callers.
        """
        flat = _distinct_requests(call_lists)
        stage = f"decoder:{self.name}"
        self.metrics.add("superlink_queue_depth", len(call_lists), stage=stage)
        try:
            with self._lock, cancellable(cancel):
                results = list(self.pipeline.run_decoder(self.name, flat)) if flat else []
        finally:
            self.metrics.add("superlink_queue_depth", -len(call_lists), stage=stage)
        self.metrics.observe("superlink_batch_size", len(call_lists), stage=stage)
        if len(results) != len(flat):
            raise RuntimeError(f"decoder {self.name} returned {len(results)} results for {len(flat)} calls")
        self._record(len(call_lists), len(flat))
        out, start = [], 0
        for calls in call_lists:  # results are aligned with the calls; give each back its caller's request index
            out.append([replace(r, request=c.request) for c, r in zip(calls, results[start : start + len(calls)], strict=True)])
            start += len(calls)
        return out

    def _record(self, callers: int, calls: int) -> None:
        self.batches += 1
        self.max_batch = max(self.max_batch, callers)
        self.calls_total += calls

    def stats(self) -> dict[str, Any]:
        return {"decoder": self.name, "batches": self.batches, "max_batch": self.max_batch, "calls": self.calls_total}


@runtime_checkable
class Backend(Protocol):
    """Where the stages run; IngressLogic only awaits these."""

    async def front(self, requests: list[Request]) -> Planned | Rejected: ...

    async def run_decoder(self, name: str, calls: list[Any]) -> list[Any]: ...

    async def assemble(self, planned: Planned, results: dict[str, list[Any]], timings: dict[str, float]) -> list[Response]: ...

    async def describe(self) -> dict[str, Any]: ...


class LocalBackend:
    """Stages of one in-process Pipeline, run in worker threads (no Ray).

    The engines serialise the MLLM and each decoder, as a single Serve replica would, while
    different decoders still run concurrently.
    """

    def __init__(self, pipeline: Any, metrics: NullMetrics | None = None):
        self.mllm = MLLMEngine(pipeline, metrics)
        self.decoders = {n: DecoderEngine(pipeline, n, metrics) for n in dict.fromkeys(self.mllm.routes.values())}

    async def front(self, requests: list[Request]) -> Planned | Rejected:
        return await in_thread_cancellable(self.mllm.front, requests)

    async def run_decoder(self, name: str, calls: list[Any]) -> list[Any]:
        if name not in self.decoders:
            return not_deployed(name, calls, self.decoders)
        return (await in_thread_cancellable(self.decoders[name].run_batch, [calls]))[0]

    async def assemble(self, planned: Planned, results: dict[str, list[Any]], timings: dict[str, float]) -> list[Response]:
        return await asyncio.to_thread(self.mllm.assemble, planned, results, timings)

    async def describe(self) -> dict[str, Any]:
        return {
            "routes": dict(self.mllm.routes),
            "decoders": {n: e.stats() for n, e in self.decoders.items()},
            "backend": "in-process",
        }


async def in_thread_cancellable(fn: Any, *args: Any) -> Any:
    """`fn(*args, cancel)` in a worker thread; when the awaiting task is cancelled (its timeout passed),
    the event is set so the thread stops at its next check instead of running on holding a lock."""
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(fn, *args, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise


async def batch_cancellable(fn: Any, batch: list[Any], events: list[threading.Event]) -> Any:
    """`fn(batch, AllSet(events))` in a worker thread: the run stops only when every caller gave up."""
    return await asyncio.to_thread(fn, batch, AllSet(events))


def not_deployed(name: str, calls: list[Any], deployed: dict[str, Any]) -> list[Any]:
    """Results for calls bound to a decoder this service does not run."""
    msg = f"decoder {name!r} is not deployed; deployed decoders: {sorted(deployed)}"
    return [failed(c, "route_not_deployed", msg) for c in calls]


def check_images(request: Request, max_pixels: int) -> None:
    """Every image decodes fully (mllm.images.load_image, size checked before decoding).

    One status per kind of fault, whatever the image: over the pixel limit 422, not decodable 400.
    """
    for k, data in enumerate(request.images):
        try:
            load_image(data, max_pixels)
        except TooManyPixels as err:
            msg = f"images[{k}] is {err.size_text}; the limit is {max_pixels} pixels (http.max_image_pixels); downscale it"
            raise ServiceError(422, msg) from None
        except ImageError as err:
            raise ServiceError(400, f"images[{k}] is not a readable image: {err}") from None


class IngressLogic:
    """HTTP-independent request handling over a Backend."""

    def __init__(self, backend: Backend, http: HTTPConfig | None = None, metrics: NullMetrics | None = None):
        self.backend = backend
        self.http = http or HTTPConfig()
        self.metrics = metrics or NullMetrics()

    async def admit(self, request: Request) -> Budget:
        """Check the request's images (400/422 before any model work) and start its time budget:
        options.timeout_s capped by the server's request_timeout_s. Plain and streamed requests share it."""
        await asyncio.to_thread(check_images, request, self.http.max_image_pixels)
        limit = min(request.options.timeout_s or self.http.request_timeout_s, self.http.request_timeout_s)
        return Budget(limit=limit, deadline=time.monotonic() + limit, t0=time.perf_counter())

    async def handle(self, request: Request) -> Response:
        """One request end to end, within its timeout (options.timeout_s capped by the server's)."""
        budget = await self.admit(request)
        planned = await self._front(request, budget)
        results, timings = await self._decoders(planned, budget.deadline)
        timings = {**planned.timings, **timings}
        response = (await self.backend.assemble(planned, results, timings))[0]
        response.timings_ms["total"] = _ms(budget.t0)
        return response

    async def _front(self, request: Request, budget: Budget) -> Planned:
        """The MLLM stage within the budget; on timeout the backend call is cancelled (its worker stops)."""
        try:
            out = await asyncio.wait_for(self.backend.front([request]), budget.remaining())
        except TimeoutError:
            raise ServiceError(503, f"the model did not answer within the {budget.limit:g} s request timeout") from None
        except ServiceError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of the MLLM stage means nothing can be answered
            log.error("model stage failed", exc_info=err)  # the traceback goes to the log, with the request id
            rid = current_request_id()
            raise ServiceError(503, f"the model stage failed ({public_error(err)}); request id {rid}") from None
        if isinstance(out, Rejected):
            raise ServiceError(422, out.message)
        return out

    async def _decoders(self, planned: Planned, deadline: float) -> tuple[dict[str, list[Any]], dict[str, float]]:
        """Every decoder concurrently; a failure or timeout becomes PartErrors for that decoder's calls."""
        names = list(planned.plan)
        runs = [self._one_decoder(n, planned.plan[n], deadline) for n in names]
        outs = await asyncio.gather(*runs)
        results = {n: r for n, (r, _) in zip(names, outs, strict=True)}
        timings = {n: ms for n, (_, ms) in zip(names, outs, strict=True)}
        return results, timings

    async def _one_decoder(self, name: str, calls: list[Any], deadline: float) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        try:
            remaining = max(deadline - time.monotonic(), 0.0)
            results = await asyncio.wait_for(self.backend.run_decoder(name, calls), remaining)
        except TimeoutError:
            results = [failed(c, "timeout", f"decoder {name} did not answer before the request timeout") for c in calls]
        except Exception as err:  # noqa: BLE001 - one decoder's failure must not take the response down
            log.error("decoder failed", extra={"decoder": name}, exc_info=err)
            msg = f"decoder {name} failed ({public_error(err)}); request id {current_request_id()}"
            results = [failed(c, "decoder_failed", msg) for c in calls]
        self.metrics.inc("superlink_decoder_calls_total", float(len(calls)), decoder=name)
        self.metrics.observe("superlink_decoder_latency_seconds", time.perf_counter() - t0, decoder=name)
        for r in results:
            if getattr(r, "error", None) is not None:
                self.metrics.inc("superlink_decoder_errors_total", decoder=name, kind=r.error.kind)
        return results, _ms(t0)
