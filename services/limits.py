"""Input limits of the HTTP API that are not part of the Request schema.

    parse_json_body     JSON text -> object; malformed, too deep or too-long numbers -> 400
    StrictMultiPartParser  starlette's parser, but a body without its closing boundary and a text
                        field that is not UTF-8 are refused (400) instead of silently accepted
    HeaderLimitMiddleware  request headers over `max_header_bytes` in all -> 431
    public_error        an exception -> one line safe to show a client (no traceback, no Ray internals)

One kind of fault, one status: unparseable body 400, schema violation 422, body over the limit
413, headers over the limit 431, wrong content type 415, image over the pixel limit 422.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_JSON_DEPTH = 32  # a Request nests 7 levels deep (request.regions[k].scribble.lines[i][j]); the rest is room
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BodyError(ValueError):
    """A body that cannot be parsed; the message says what was wrong."""


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping (returning limit + 1) as soon as it passes limit."""
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON text -> Python value, or BodyError for malformed text, nesting deeper than max_depth,
    integers over Python's digit limit, and NaN/Infinity (not JSON)."""

    def no_constant(name: str) -> Any:
        raise BodyError(f"{name} is not valid JSON; send finite numbers")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise BodyError(f"number {text[:20]}... overflows a 64-bit float; send finite numbers")
        return value

    try:
        data = json.loads(body, parse_constant=no_constant, parse_float=finite)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError(f"JSON is nested too deeply; the limit is {max_depth} levels") from None
    except UnicodeDecodeError as err:
        raise BodyError(f"body is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise BodyError(str(err)) from None
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise BodyError(f"a number is out of range ({str(err).split(';')[0]})") from None
    if json_depth(data, max_depth) > max_depth:
        raise BodyError(f"JSON is nested too deeply; the limit is {max_depth} levels")
    return data


class StrictMultiPartParser(MultiPartParser):
    """MultiPartParser that requires the closing boundary and UTF-8 text fields (raises MultiPartException)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ended = False

    def on_part_end(self) -> None:
        if self._current_part.file is None:
            try:
                self._current_part.data.decode("utf-8")
            except UnicodeDecodeError as err:
                name = self._current_part.field_name
                raise MultiPartException(f"field {name!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        super().on_part_end()

    def on_end(self) -> None:
        self.ended = True

    async def parse(self) -> Any:
        form = await super().parse()
        if not self.ended:
            raise MultiPartException("the body ends before its closing boundary (--BOUNDARY--); parts may be missing")
        return form


class HeaderLimitMiddleware:
    """Refuse requests whose header lines (names + values) exceed `max_bytes` in all, with 431."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))  # "k: v\r\n"
            size += len(scope.get("raw_path", b"") or b"") + len(scope.get("query_string", b""))
            if size > self.max_bytes:
                msg = f"request headers and URL are {size} bytes; the limit is {self.max_bytes} bytes"
                await JSONResponse({"detail": msg}, status_code=431)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def public_error(err: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` of the root cause, without ANSI codes, at most `limit` characters.

    Ray wraps a replica's exception in a RayTaskError whose text is the remote traceback (paths, pid,
    IP, actor id); its `.cause` is the original exception, which is what a client may see.
    """
    seen = set()
    while getattr(err, "cause", None) is not None and id(err) not in seen:  # RayTaskError(...).cause
        seen.add(id(err))
        err = err.cause  # type: ignore[assignment]
    name = type(err).__name__.removeprefix("RayTaskError(").removesuffix(")")
    if type(err).__module__.startswith("ray."):  # actor died / unavailable: the text names actors, pids, IPs
        return f"{name} (a replica failed or is restarting)"
    text = _ANSI.sub("", str(err)).strip().splitlines()
    line = text[0] if text else ""
    out = f"{name}: {line}" if line else name
    return out if len(out) <= limit else out[: limit - 3] + "..."
