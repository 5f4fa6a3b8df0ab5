"""Streamed answers: `POST /v1/tasks` with `"stream": true` answers with server-sent events.

    event: generating while the in-process model generates: {"text": the answer so far, routing markers and
                      location tokens as generated}, after each new token (only the newest when several
                      queued up); not sent by the Ray app, whose MLLM runs in another process
    event: text       once the MLLM stage is done: the answer text (each routing marker shown as "(…)"
                      until its part arrives), raw_text, routes, natively localised items, the parts
                      still to come (`pending`: route, phrase, decoder) and the stage timings so far
    event: part       one per decoder, in the order they finish (a detector is not held up by
                      diffusion): that decoder's items, grouped like the Response's lists
                      (detections, polygons, points, keypoints, images), its part errors and its time
    event: response   last: the whole Response, equal to the non-streamed answer
    event: error      only if something breaks after the stream began: {"status", "detail", "request_id"}
                      (the detail is what a plain request's error body would say: one clean line, never a
                      traceback, which goes to the log)

Everything that can be refused before the first generated token is refused with the same status and JSON
body ({"detail", "request_id"}) as without `stream`: body limits, bad image, a request the model rejects
(prompt safety: role markers, special tokens), a model stage that fails or times out before generating;
after that, a failure of the model stage is an `error` event. The request id (X-Request-ID) is the
response header's, and the final `response` event's `request_id`. A timed-out or abandoned (client gone)
model or decoder call is cancelled as for a plain request (services/cancel.py); streams are counted in
the request metrics and in superlink_streams_total{outcome}. Token-level
text uses a context variable the in-process Pipeline reads (router/stages.py GENERATED_TEXT_SINK), so the
batched generate is unchanged and unaware of HTTP.

The orchestration is the IngressLogic's (services/engines.py), so the same code streams over an
in-process Pipeline (`superlink serve --no-ray`) and on the Ray Serve ingress, whose decoder calls go
to the decoder deployments.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event

from router.response import checked_result, sort_items
from router.schemas import Request
from router.stages import GENERATED_TEXT_SINK
from services.engines import Budget, IngressLogic, Planned, ServiceError
from services.observability import current_request_id

log = logging.getLogger("superlink")

PENDING = "(…)"  # shown in the text event where a routing marker's part has not arrived yet
_NOT_RUN = "(not run)"  # what assembly writes for a marker whose result is missing

SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the Response as JSON; with `\"stream\": true`, server-sent events `generating` (the "
        "answer so far; in-process server), `text`, `part` (one per decoder, as each finishes) and `response` "
        "(the whole Response)",
        "content": {"text/event-stream": {"schema": {"type": "string", "description": "SSE events; data is JSON"}}},
    }
}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event whose data is JSON (FastAPI's own SSE encoder)."""
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":")), event=event)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _items_json(items: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Items grouped under the Response's list names, as JSON; `items` holds them all, tagged by kind (the
    Response's `parts`; an event's own `parts` key lists the decoder parts it answers)."""
    groups = sort_items(items)
    out = {key: [it.model_dump(mode="json") for it in group] for key, group in groups.items() if key != "parts"}
    out["items"] = [it.model_dump(mode="json") for it in groups["parts"]]
    return out


async def stream_response(logic: IngressLogic, request: Request) -> EventSourceResponse:
    """Start the model stage; answer with its HTTP error if it fails before producing any text, else stream.

    The checks, the time budget, the cancellation of timed-out calls and the error texts are those of
    IngressLogic.handle (admit, _front, _one_decoder); only the order the results go out in differs.
    """
    budget = await logic.admit(request)
    loop = asyncio.get_running_loop()
    texts: asyncio.Queue[str] = asyncio.Queue()

    def sink(index: int, text: str) -> None:  # called from the generating thread
        loop.call_soon_threadsafe(texts.put_nowait, text)

    token = GENERATED_TEXT_SINK.set(sink)
    try:  # the task copies this context, so only this request's generation sees the sink
        front = asyncio.ensure_future(logic._front(request, budget))
    finally:
        GENERATED_TEXT_SINK.reset(token)
    first = asyncio.ensure_future(texts.get())
    try:
        await asyncio.wait({front, first}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the client went away before anything was sent: stop the model call too
        front.cancel()
        first.cancel()
        raise
    if front.done() and (not first.done() or front.exception() is not None):
        first.cancel()
        planned = front.result()  # raises the stage's ServiceError: the usual status and JSON body
        stream = events(logic, planned, budget)
    else:
        stream = _with_text(logic, front, first.result(), texts, budget)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventSourceResponse(_counted(logic, stream), headers=headers)


async def _counted(logic: IngressLogic, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream, counted in superlink_streams_total by how it ended (response, error, client_gone)."""
    outcome = "client_gone"
    try:
        async for chunk in stream:
            if chunk.startswith(b"event: response\n"):
                outcome = "response"
            elif chunk.startswith(b"event: error\n"):
                outcome = "error"
            yield chunk
    finally:
        logic.metrics.inc("superlink_streams_total", outcome=outcome)


def error_event(status: int, detail: str) -> bytes:
    """The `error` event: the same fields as an HTTP error body, plus the status the stream could not send."""
    return sse("error", {"status": status, "detail": detail, "request_id": current_request_id()})


async def _with_text(
    logic: IngressLogic, front: asyncio.Future, text: str, texts: asyncio.Queue[str], budget: Budget
) -> AsyncIterator[bytes]:
    """`generating` events with the text so far until the model stage is done, then the usual events."""
    try:
        while True:
            while not texts.empty():  # send only the newest text when several steps queued up
                text = texts.get_nowait()
            yield sse("generating", {"text": text})
            nxt = asyncio.ensure_future(texts.get())
            await asyncio.wait({front, nxt}, return_when=asyncio.FIRST_COMPLETED)
            if front.done():
                nxt.cancel()
                break
            text = nxt.result()
        planned = front.result()
    except ServiceError as err:  # _front's texts are already clean (public_error, request id)
        yield error_event(err.status, err.message)
        return
    finally:
        front.cancel()  # no-op once done; a client gone mid-generation cancels the model call (services/cancel.py)
    async for chunk in events(logic, planned, budget):
        yield chunk


async def events(logic: IngressLogic, planned: Planned, budget: Budget) -> AsyncIterator[bytes]:
    """text, then one part per decoder as it finishes, then the whole response."""
    names = list(planned.plan)
    tasks = {asyncio.ensure_future(_run(logic, n, planned.plan[n], budget.deadline)): n for n in names}
    try:
        yield sse("text", await _text_event(logic, planned))
        results: dict[str, list[Any]] = {}
        timings: dict[str, float] = {}
        for next_done in asyncio.as_completed(list(tasks)):
            name, res, ms = await next_done
            results[name], timings[name] = res, ms
            yield sse("part", _part_event(name, res, ms))
        response = (await logic.backend.assemble(planned, results, {**planned.timings, **timings}))[0]
        response.timings_ms["total"] = _ms(budget.t0)
        response.request_id = current_request_id()
        yield sse("response", response.model_dump(mode="json"))
    except ServiceError as err:
        yield error_event(err.status, err.message)
    except Exception as err:  # noqa: BLE001 - the stream has begun: report the failure as an event
        log.error("streamed request failed after its first event", exc_info=err)  # traceback to the log only
        yield error_event(500, f"internal server error; quote request id {current_request_id()} when reporting it")
    finally:
        for task in tasks:  # a client that went away must not leave decoder calls running (they are cancelled)
            task.cancel()


async def _run(logic: IngressLogic, name: str, calls: list[Any], deadline: float) -> tuple[str, list[Any], float]:
    results, ms = await logic._one_decoder(name, calls, deadline)
    return name, results, ms


async def _text_event(logic: IngressLogic, planned: Planned) -> dict[str, Any]:
    """The answer as far as the MLLM stage knows it: assembled with no decoder results yet."""
    early = (await logic.backend.assemble(planned, {}, dict(planned.timings)))[0]
    pending = [
        {"route": c.route, "phrase": c.phrase, "decoder": name, "event": c.event}
        for name, calls in planned.plan.items()
        for c in calls
    ]
    native = {k: [it.model_dump(mode="json") for it in getattr(early, k)] for k in ("detections", "polygons", "points")}
    return {
        "text": early.text.replace(_NOT_RUN, PENDING),
        "raw_text": early.raw_text,
        "routes": early.routes,
        "pending": sorted(pending, key=lambda p: p["event"]),
        "errors": [e.model_dump(mode="json") for e in early.errors],
        "timings_ms": early.timings_ms,
        **native,
    }


def _part_event(name: str, results: list[Any], ms: float) -> dict[str, Any]:
    results = [checked_result(r) for r in results]
    items = [it for r in results for it in r.items]
    return {
        "decoder": name,
        "parts": [
            {"route": r.route, "phrase": r.phrase, "event": r.event, "summary": r.summary if r.error is None else None}
            for r in results
        ],
        **_items_json(items),
        "errors": [r.error.model_dump(mode="json") for r in results if r.error is not None],
        "elapsed_ms": ms,
    }
