"""The web page is served at / with its files; the example scenes are reproducible and their requests valid."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from router.schemas import Request
from services.http import create_app
from services.web import STATIC_DIR
from services.web.examples import EXAMPLES_DIR, make_examples
from tests.doubles import FakePipeline


def test_page_and_its_files_are_served():
    c = TestClient(create_app(FakePipeline()))
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in ("/web/app.js", "/web/style.css"):
        assert ref in page.text
        assert c.get(ref).status_code == 200
    assert "text/event-stream" in c.get("/web/app.js").text  # the page asks for the streamed answer
    examples = c.get("/web/examples/examples.json").json()["examples"]
    assert len(examples) >= 3
    for ex in examples:
        img = c.get(f"/web/examples/{ex['file']}")
        assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
    assert c.get("/web/../http.py").status_code == 404
    assert "/" not in c.get("/openapi.json").json()["paths"]


def test_examples_are_reproducible_and_valid(tmp_path):
    records = make_examples(tmp_path)
    for r in records:
        assert (tmp_path / r["file"]).read_bytes() == (EXAMPLES_DIR / r["file"]).read_bytes(), r["file"]
        image = (EXAMPLES_DIR / r["file"]).read_bytes()
        for text in r["instructions"]:
            if "<region>" not in text:
                Request(images=[image], instruction=text)
    assert json.loads((tmp_path / "examples.json").read_text()) == json.loads((EXAMPLES_DIR / "examples.json").read_text())
    assert any("draw" in t.lower() for t in records[0]["instructions"][:1])  # the first suggestion is compound with [GEN]


def test_static_files_are_self_contained():
    """No build step and nothing fetched from elsewhere: every file the page loads is local."""
    html = (STATIC_DIR / "index.html").read_text()
    js = (STATIC_DIR / "app.js").read_text()
    for text in (html, js, (STATIC_DIR / "style.css").read_text()):
        assert "http://" not in text and "https://" not in text and "@import" not in text
