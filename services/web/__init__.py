"""The web page: plain HTML/CSS/JS files in static/ (no build step), served by the ingress at `/`.

    GET /                 the page (static/index.html)
    GET /web/...          its script, style sheet and example ShapesWorld scenes (static/examples/)

The page talks to the same API as any client (`POST /v1/tasks` with `"stream": true`), so it works
unchanged over `superlink serve` (Ray Serve ingress) and `superlink serve --no-ray`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"


def mount_web(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/web/`."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="web")
