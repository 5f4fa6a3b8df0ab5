"""Python clients for the SuperLink HTTP API (httpx), sync and async; both return the pydantic Response.

    with SuperLinkClient("http://127.0.0.1:8000") as sl:
        resp = sl.tasks("detect the red circles", images=[Path("scene.png")])
        for ev in sl.stream("detect the circles, draw a square", images=[png]):   # server-sent events
            print(ev.event, ev.data)            # generating (in-process server), text, part (one per decoder), response
        resp = ev.response                      # the whole Response, from the last event
        resp = sl.tasks("What is in <region>?", images=[Path("scene.png")],
                        regions=[scribble_region([[(10, 12), (30, 40), (52, 41)]], width=6)])
        resp = sl.tasks("Outline each star with a 12-point polygon.", images=[Path("scene.png")])
        resp.polygons  # Polygon items: label, 12 points, mask (RLE)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse
from PIL import Image

from router.schemas import Options, RegionPrompt, Request, Response

ImageInput = bytes | Image.Image | Path


class SuperLinkHTTPError(RuntimeError):
    """The server answered with an error status; `message` is the server's explanation."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def scribble_region(
    lines: Sequence[Sequence[Sequence[float]]], width: float = 4.0, image: int = 0
) -> RegionPrompt:
    """A scribble region prompt: polylines of (x, y) pixel points drawn `width` px wide on image `image`."""
    return RegionPrompt(image=image, scribble={"lines": [[tuple(p) for p in line] for line in lines], "width": width})


def _image_bytes(image: ImageInput) -> bytes | Image.Image:
    """Local files are read here, on the client; the server never reads paths."""
    return image.read_bytes() if isinstance(image, Path) else image


def build_request(
    request_or_instruction: Request | str,
    images: Sequence[ImageInput] = (),
    regions: Sequence[RegionPrompt | dict] = (),
    options: Options | dict | None = None,
) -> Request:
    """A Request from an instruction and parts, or the given Request unchanged (then no other parts)."""
    if isinstance(request_or_instruction, Request):
        if images or regions or options is not None:
            raise ValueError("pass either a Request or an instruction with images/regions/options, not both")
        return request_or_instruction
    return Request(
        instruction=request_or_instruction,
        images=[_image_bytes(i) for i in images],
        regions=list(regions),
        options=options if options is not None else Options(),
    )


def _request_kwargs(request: Request, multipart: bool) -> dict[str, Any]:
    """httpx keyword arguments: a JSON body, or multipart with one `file` part per image."""
    if not multipart:
        return {"json": request.model_dump(mode="json")}
    files = [("file", (f"image{k}.png", data, "application/octet-stream")) for k, data in enumerate(request.images)]
    body = request.model_dump(mode="json", exclude={"images"})
    return {"files": files, "data": {"request": json.dumps(body)}}


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        try:
            message = resp.json().get("detail", resp.text)
        except ValueError:
            message = resp.text
        raise SuperLinkHTTPError(resp.status_code, message if isinstance(message, str) else json.dumps(message))
    return resp


def _response(resp: httpx.Response) -> Response:
    """The /v1/tasks answer, checked and validated."""
    return Response.model_validate(_check(resp).json())


@dataclass
class StreamEvent:
    """One server-sent event of a streamed request: `generating`, `text`, `part` or `response` (services/streaming.py)."""

    event: str
    data: dict[str, Any]

    @property
    def response(self) -> Response | None:
        """The whole Response, on the last (`response`) event; None on the others."""
        return Response.model_validate(self.data) if self.event == "response" else None


def _stream_event(sse: ServerSentEvent) -> StreamEvent:
    data = sse.json()
    if sse.event == "error":
        raise SuperLinkHTTPError(int(data.get("status", 500)), str(data.get("detail", data)))
    return StreamEvent(sse.event, data)


def _stream_kwargs(request: Request, multipart: bool) -> dict[str, Any]:
    return _request_kwargs(request.model_copy(update={"stream": True}), multipart)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class SuperLinkClient:
    """Blocking client."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0, **httpx_kwargs: Any):
        self._http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout, **httpx_kwargs)

    def tasks(
        self,
        request_or_instruction: Request | str,
        images: Sequence[ImageInput] = (),
        regions: Sequence[RegionPrompt | dict] = (),
        options: Options | dict | None = None,
        multipart: bool = False,
    ) -> Response:
        request = build_request(request_or_instruction, images, regions, options)
        return _response(self._http.post("/v1/tasks", **_request_kwargs(request, multipart)))

    def stream(
        self,
        request_or_instruction: Request | str,
        images: Sequence[ImageInput] = (),
        regions: Sequence[RegionPrompt | dict] = (),
        options: Options | dict | None = None,
        multipart: bool = False,
    ) -> Iterator[StreamEvent]:
        """The request streamed: events as they arrive; the last one's `.response` is the whole Response.
        A refused request raises SuperLinkHTTPError before the first event, as `tasks` does."""
        request = build_request(request_or_instruction, images, regions, options)
        with connect_sse(self._http, "POST", "/v1/tasks", **_stream_kwargs(request, multipart)) as source:
            if source.response.status_code >= 400:
                source.response.read()
                _check(source.response)
            for sse in source.iter_sse():
                yield _stream_event(sse)

    def routes(self) -> dict[str, Any]:
        return _check(self._http.get("/v1/routes")).json()

    def health(self) -> dict[str, Any]:
        return _check(self._http.get("/healthz")).json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SuperLinkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSuperLinkClient:
    """asyncio client with the same methods as SuperLinkClient."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0, **httpx_kwargs: Any):
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(token), timeout=timeout, **httpx_kwargs)

    async def tasks(
        self,
        request_or_instruction: Request | str,
        images: Sequence[ImageInput] = (),
        regions: Sequence[RegionPrompt | dict] = (),
        options: Options | dict | None = None,
        multipart: bool = False,
    ) -> Response:
        request = build_request(request_or_instruction, images, regions, options)
        return _response(await self._http.post("/v1/tasks", **_request_kwargs(request, multipart)))

    async def stream(
        self,
        request_or_instruction: Request | str,
        images: Sequence[ImageInput] = (),
        regions: Sequence[RegionPrompt | dict] = (),
        options: Options | dict | None = None,
        multipart: bool = False,
    ) -> AsyncIterator[StreamEvent]:
        """As SuperLinkClient.stream, for `async for`."""
        request = build_request(request_or_instruction, images, regions, options)
        async with aconnect_sse(self._http, "POST", "/v1/tasks", **_stream_kwargs(request, multipart)) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                _check(source.response)
            async for sse in source.aiter_sse():
                yield _stream_event(sse)

    async def routes(self) -> dict[str, Any]:
        return _check(await self._http.get("/v1/routes")).json()

    async def health(self) -> dict[str, Any]:
        return _check(await self._http.get("/healthz")).json()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSuperLinkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
