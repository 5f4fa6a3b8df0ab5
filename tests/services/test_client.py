"""The sync and async clients against a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from router.schemas import Request, Response
from services.client import AsyncSuperLinkClient, SuperLinkClient, SuperLinkHTTPError, scribble_region
from services.config import HTTPConfig
from services.http import BackgroundServer, create_app
from tests.doubles import FakePipeline


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def url():
    with BackgroundServer(create_app(FakePipeline(fail={"editor"}), HTTPConfig(auth_token="tok"))) as u:
        yield u


@pytest.mark.parametrize("multipart", [False, True])
def test_sync_client_tasks(url, tmp_path, multipart):
    path = tmp_path / "scene.png"
    path.write_bytes(png())
    with SuperLinkClient(url, token="tok") as sl:
        resp = sl.tasks("detect circles, draw one", images=[path, png()], regions=[{"image": 1, "point": [2, 2]}], multipart=multipart)
    assert isinstance(resp, Response)
    assert resp.routes == ["DET", "GEN"] and resp.detections[0].phrase == "circles"
    assert resp.images[0].width == 1


def test_sync_client_routes_health_and_errors(url):
    with SuperLinkClient(url, token="tok") as sl:
        assert sl.health() == {"status": "ok"}
        assert sl.routes()["routes"]["EDIT"] == "editor"
        with pytest.raises(SuperLinkHTTPError) as e:
            sl.tasks(Request(instruction="detect", options={"routes": ["XYZ"]}))
        assert e.value.status == 422 and "XYZ" in e.value.message
        resp = sl.tasks("edit it")
        assert resp.errors[0].kind == "decoder_failed" and resp.images == []
    with SuperLinkClient(url) as anonymous, pytest.raises(SuperLinkHTTPError) as e:
        anonymous.tasks("detect")
    assert e.value.status == 401


def test_async_client(url):
    async def main() -> list[Response]:
        async with AsyncSuperLinkClient(url, token="tok") as sl:
            assert (await sl.health())["status"] == "ok"
            assert "DET" in (await sl.routes())["routes"]
            return await asyncio.gather(*(sl.tasks(f"detect {i}", images=[png()]) for i in range(4)))

    out = asyncio.run(main())
    assert [r.routes for r in out] == [["DET"]] * 4


def test_request_and_parts_are_exclusive():
    with SuperLinkClient("http://127.0.0.1:9") as sl, pytest.raises(ValueError, match="not both"):
        sl.tasks(Request(instruction="x"), images=[png()])


def test_scribble_region_helper_builds_a_valid_prompt(url):
    region = scribble_region([[(1, 1), (6, 5)]], width=3)
    assert region.scribble.lines == [[(1.0, 1.0), (6.0, 5.0)]] and region.scribble.width == 3
    with SuperLinkClient(url, token="tok") as sl:
        resp = sl.tasks("detect <region>", images=[png()], regions=[region])
    assert resp.routes == ["DET"]
    with pytest.raises(ValueError, match="polyline 0 is empty"):
        scribble_region([[]])
