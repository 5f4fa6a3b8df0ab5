"""The HTTP API (FastAPI). The same app runs inside Ray Serve (the ingress deployment) and alone
over an in-process Pipeline (`create_app(pipeline)` + uvicorn).

    POST /v1/tasks    JSON Request (images as base64) or multipart (`file` parts + `request` JSON field)
    GET  /v1/routes   deployed routes, decoders and their batch statistics
    GET  /healthz     liveness
    GET  /metrics     Prometheus metrics (in-process server; under Ray, Ray's metrics agent exports them)
    GET  /docs        OpenAPI UI
    GET  /            the web page (services/web/)

The server never fetches URLs or reads client-given paths: Request validation without an
image_root rejects {"path": ...} images.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from fastapi.responses import Response as PlainResponse
from pydantic import ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.schemas import Request, response_model
from services.config import HTTPConfig
from services.engines import Backend, IngressLogic, LocalBackend, ServiceError
from services.limits import BodyError, HeaderLimitMiddleware, StrictMultiPartParser, parse_json_body
from services.observability import (
    NullMetrics,
    PrometheusMetrics,
    RequestContextMiddleware,
    current_request_id,
)
from services.streaming import SSE_RESPONSES, stream_response
from services.web import mount_web

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["request"],
    "properties": {
        "request": {"type": "string", "description": "the Request as JSON; its images are appended after the files"},
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
    },
}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "body is not valid JSON/multipart (or too deeply nested), or an image cannot be decoded"},
    401: {"description": "missing or wrong bearer token (when auth is on)"},
    413: {"description": "request body over the size limit"},
    415: {"description": "content type other than application/json or multipart/form-data"},
    431: {"description": "request headers over the size limit"},
    422: {"description": "invalid request: empty/long instruction, bad region, too many pixels, route not deployed"},
    503: {"description": "nothing could be answered: the model stage failed or timed out"},
}


def _openapi_body() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Request"}},
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            },
        }
    }


async def read_body(http_request: HTTPRequest, limit: int) -> bytes:
    """The body, refusing (413) before reading when Content-Length says it is too large, and while streaming."""
    declared = http_request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in http_request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "request"
        parts.append(f"{loc}: {e['msg']}")
    return "invalid request: " + "; ".join(parts)


def parse_json_request(body: bytes, extra_images: list[bytes] = ()) -> Request:
    """Validate a JSON body as Request (no image_root: paths are refused); uploaded files come first."""
    try:
        data = parse_json_body(body)
    except BodyError as err:
        raise ServiceError(400, f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ServiceError(422, f"request body must be a JSON object, got {type(data).__name__}")
    if extra_images:
        data["images"] = list(extra_images) + list(data.get("images") or [])
    try:
        return Request.model_validate(data)
    except ValidationError as err:
        raise ServiceError(422, _validation_message(err)) from None


async def parse_multipart(headers: Headers, body: bytes) -> Request:
    """`file` parts (images, in order) + a `request` field holding the Request JSON."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body  # already read and size-checked

    parser = StrictMultiPartParser(headers, stream(), max_files=16, max_fields=16, max_part_size=len(body) + 1)
    try:
        form = await parser.parse()
    except Exception as err:  # noqa: BLE001 - a malformed multipart body is the client's error
        raise ServiceError(400, f"could not parse the multipart body: {err}") from None
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    raw = form.get("request")
    if raw is None or isinstance(raw, UploadFile):
        raise ServiceError(422, "multipart body needs a `request` text field holding the Request JSON")
    images = [await f.read() for f in files]
    return parse_json_request(raw.encode(), images)


def _check_auth(http_request: HTTPRequest, token: str | None) -> None:
    if token is None:
        return
    header = http_request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def create_app(
    engine: Any, http: HTTPConfig | None = None, metrics: NullMetrics | None = None, behind_ray_proxy: bool = False
) -> FastAPI:
    """The FastAPI app over a Backend, or over an in-process Pipeline (wrapped in LocalBackend).

    metrics: where request/decoder metrics go; default a fresh prometheus_client registry served on /metrics.
    behind_ray_proxy: Ray Serve's proxy assigns the request id and echoes it (see RequestContextMiddleware).
    """
    http = http or HTTPConfig()
    metrics = metrics if metrics is not None else PrometheusMetrics()
    backend: Backend = engine if isinstance(engine, Backend) else LocalBackend(engine, metrics)
    logic = IngressLogic(backend, http, metrics)
    token = http.resolved_token()
    app = FastAPI(title="SuperLink", version="0.1.0", description="One multimodal LLM routing link states to task decoders.")
    app.add_middleware(RequestContextMiddleware, metrics=metrics, behind_ray_proxy=behind_ray_proxy)
    app.add_middleware(HeaderLimitMiddleware, max_bytes=http.max_header_bytes)  # outermost: refuses first

    @app.exception_handler(ServiceError)
    async def _service_error(_: HTTPRequest, err: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": err.message, "request_id": current_request_id()}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: HTTPRequest, err: StarletteHTTPException) -> JSONResponse:
        body = {"detail": err.detail, "request_id": current_request_id()}
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> PlainResponse:
        if not hasattr(metrics, "exposition"):
            raise ServiceError(404, "metrics are exported by Ray's metrics agent (ray metrics port), not by this app")
        data, content_type = metrics.exposition()
        return PlainResponse(data, media_type=content_type)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/routes")
    async def routes(http_request: HTTPRequest) -> dict[str, Any]:
        _check_auth(http_request, token)
        return await backend.describe()

    @app.post("/v1/tasks", response_model=response_model(), responses={**SSE_RESPONSES, **_ERRORS}, openapi_extra=_openapi_body())
    async def tasks(http_request: HTTPRequest) -> Any:
        """Run one request; a failed decoder part comes back as an entry in `errors`, with status 200.
        With `"stream": true` the answer is server-sent events (services/streaming.py)."""
        _check_auth(http_request, token)
        body = await read_body(http_request, http.max_body_bytes)
        content_type = http_request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            request = await parse_multipart(http_request.headers, body)
        elif content_type.startswith("application/json") or not content_type:
            request = parse_json_request(body)
        else:
            raise ServiceError(415, f"unsupported content type {content_type!r}; send application/json or multipart/form-data")
        if request.stream:
            return await stream_response(logic, request)
        response = await logic.handle(request)
        response.request_id = current_request_id()
        return response

    _add_request_schema(app)
    mount_web(app)
    app.state.logic = logic
    return app


def _add_request_schema(app: FastAPI) -> None:
    """Put Request into the OpenAPI components, since the body is parsed by hand (JSON or multipart)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            defs = Request.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["Request"] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class BackgroundServer:
    """Run an ASGI app with uvicorn in a daemon thread on a free loopback port (tests, bench, examples).

    with BackgroundServer(create_app(pipeline)) as url: ...
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)
        self._sock.close()
