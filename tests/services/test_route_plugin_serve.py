"""A route declared outside the package ([COUNT], tests/plugins/count_route.py) served on a real Ray cluster:
its decoder gets its own deployment from the routes the model declares, its parts come back over HTTP, and
/docs documents its item type."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from services.client import SuperLinkClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {"max_new_tokens": 24, "score_threshold": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def count_dir(tmp_path_factory, tiny_config):
    import torch

    from router.pipeline import Pipeline
    from tests.router.test_route_plugin import count_config

    out = tmp_path_factory.mktemp("count")
    torch.manual_seed(0)
    Pipeline.from_config(count_config(tiny_config)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def url(count_dir):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from services.app import build_app

    # Replicas import the plugin by name (the saved config's `modules:`), so they need the checkout on their path.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    port = _free_port()
    config = {
        "model": str(count_dir),
        "engine_factory": "tests.plugins.count_serving:scripted_engine",
        "routes": ["DET", "COUNT"],
        "ingress": {"ray_actor_options": {"num_cpus": 0.1}},
        "http": {"request_timeout_s": 60},
    }  # no `decoders:` section: one default deployment per decoder the routes need (detector, counter)
    try:  # a failed start (e.g. the proxy not ready in time on a loaded machine) still shuts Ray down
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="superlink", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _image() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (220, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def test_count_parts_over_http(url):
    from tests.plugins.count_route import Count

    with SuperLinkClient(url, timeout=120) as sl:
        resp = sl.tasks("count the circles, detect the stars", images=[_image()], options=OPTIONS)
        stats = sl.routes()
    assert resp.routes == ["COUNT", "DET"] and resp.errors == []
    counts = [p for p in resp.parts if p.kind == "count"]
    assert len(counts) == 1 and isinstance(counts[0], Count) and counts[0].phrase == "circles"
    assert resp.detections and {p.kind for p in resp.parts} == {"count", "detection"}
    assert "circles (1 count)" in resp.text
    assert stats["routes"]["COUNT"] == "counter" and stats["decoders"]["counter"]["calls"] >= 1


def test_docs_show_the_route_item(url):
    schema = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert "Count" in schema["components"]["schemas"]
    assert "count" in schema["components"]["schemas"]["Count"]["properties"]
    assert httpx.get(f"{url}/docs", timeout=30).status_code == 200
