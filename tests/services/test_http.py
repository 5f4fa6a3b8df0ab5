"""The FastAPI app over an in-process engine: every 4xx path, auth, multipart, partial failure, timeout."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.config import HTTPConfig
from services.http import create_app
from tests.doubles import FakePipeline


def png(w: int = 8, h: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client(engine=None, **http) -> TestClient:
    return TestClient(create_app(engine or FakePipeline(), HTTPConfig(**http)))


def body(instruction: str = "detect the circles", **extra) -> dict:
    return {"images": [b64(png())], "instruction": instruction, **extra}


def test_json_request_returns_response():
    r = client().post("/v1/tasks", json=body("detect circles, draw a square"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["routes"] == ["DET", "GEN"]
    assert [d["route"] for d in out["detections"]] == ["DET"]
    assert len(out["images"]) == 1 and out["errors"] == []
    assert {"preprocess", "generate", "detector", "generator", "total"} <= set(out["timings_ms"])


def test_multipart_upload_puts_files_first():
    req = {"instruction": "detect circles", "regions": [{"image": 1, "box": [0, 0, 2, 2]}]}
    files = [("file", ("a.png", png(), "image/png")), ("file", ("b.png", png(4, 4), "image/png"))]
    r = client().post("/v1/tasks", files=files, data={"request": json.dumps(req)})
    assert r.status_code == 200, r.text
    assert r.json()["routes"] == ["DET"]


def test_multipart_without_request_field_is_422():
    r = client().post("/v1/tasks", files=[("file", ("a.png", png(), "image/png"))])
    assert r.status_code == 422 and "request" in r.json()["detail"]


def test_body_over_limit_is_413():
    big = {"images": [b64(png(256, 256)) + "A" * 4096], "instruction": "detect"}
    r = client(max_body_bytes=2048).post("/v1/tasks", json=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_corrupt_image_is_400():
    r = client().post("/v1/tasks", json={"images": [b64(b"not an image at all")], "instruction": "detect"})
    assert r.status_code == 400 and "images[0]" in r.json()["detail"]


def test_bad_base64_is_422():
    r = client().post("/v1/tasks", json={"images": ["%%%not-base64"], "instruction": "detect"})
    assert r.status_code == 422 and "base64" in r.json()["detail"]


def test_too_many_pixels_is_422():
    r = client(max_image_pixels=100).post("/v1/tasks", json={"images": [b64(png(16, 16))], "instruction": "detect"})
    assert r.status_code == 422 and "16x16 = 256 pixels" in r.json()["detail"] and "limit is 100" in r.json()["detail"]


def test_client_paths_are_never_read(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    r = client().post("/v1/tasks", json={"images": [{"path": str(secret)}], "instruction": "detect"})
    assert r.status_code == 422 and "paths are not accepted" in r.json()["detail"]


@pytest.mark.parametrize("instruction", ["", "   ", "x" * 4001])
def test_empty_or_long_instruction_is_422(instruction):
    r = client().post("/v1/tasks", json=body(instruction))
    assert r.status_code == 422 and "instruction" in r.json()["detail"]


@pytest.mark.parametrize(
    "region",
    [{"image": 0}, {"image": 0, "box": [5, 5, 1, 1]}, {"image": 3, "point": [1, 1]}, {"image": 0, "box": [0, 0, 1, 1], "point": [1, 1]}],
)
def test_malformed_region_is_422(region):
    r = client().post("/v1/tasks", json=body(regions=[region]))
    assert r.status_code == 422 and "regions" in r.json()["detail"]


def test_not_json_is_400_and_wrong_type_is_415():
    c = client()
    assert c.post("/v1/tasks", content=b"{nope", headers={"content-type": "application/json"}).status_code == 400
    assert c.post("/v1/tasks", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_route_not_deployed_is_422():
    app = create_app(_only_routes(["DET"]))
    r = TestClient(app).post("/v1/tasks", json=body(options={"routes": ["GEN"]}))
    assert r.status_code == 422 and "not deployed" in r.json()["detail"] and "DET" in r.json()["detail"]


def test_undeployed_routes_never_fire():
    r = TestClient(create_app(_only_routes(["DET"]))).post("/v1/tasks", json=body("detect, draw"))
    assert r.status_code == 200 and r.json()["routes"] == ["DET"]


def test_pipeline_request_error_is_422():
    r = client().post("/v1/tasks", json=body("please reject this"))
    assert r.status_code == 422 and "rejected" in r.json()["detail"]


def test_decoder_failure_is_200_with_part_error():
    r = client(FakePipeline(fail={"generator"})).post("/v1/tasks", json=body("detect circles, draw a square"))
    assert r.status_code == 200
    out = r.json()
    assert len(out["detections"]) == 1 and out["images"] == []
    assert [(e["route"], e["kind"]) for e in out["errors"]] == [("GEN", "decoder_failed")]
    assert "broken on purpose" in out["errors"][0]["message"]


def test_decoder_timeout_is_200_with_part_error():
    engine = FakePipeline(delay_s={"generator": 1.0})
    r = client(engine, request_timeout_s=0.3).post("/v1/tasks", json=body("detect, draw"))
    assert r.status_code == 200
    assert [(e["route"], e["kind"]) for e in r.json()["errors"]] == [("GEN", "timeout")]
    assert len(r.json()["detections"]) == 1


def test_model_timeout_is_503():
    r = client(FakePipeline(generate_delay_s=1.0)).post("/v1/tasks", json=body(options={"timeout_s": 0.2}))
    assert r.status_code == 503 and "timeout" in r.json()["detail"]


def test_model_failure_is_503():
    class Broken(FakePipeline):
        def generate(self, prepared):
            raise RuntimeError("out of memory")

    r = client(Broken()).post("/v1/tasks", json=body())
    assert r.status_code == 503 and "out of memory" in r.json()["detail"]


def test_bearer_token_auth(monkeypatch):
    monkeypatch.setenv("SUPERLINK_API_TOKEN", "s3cret")
    c = client()
    assert c.post("/v1/tasks", json=body()).status_code == 401
    assert c.post("/v1/tasks", json=body(), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/v1/routes").status_code == 401
    assert c.post("/v1/tasks", json=body(), headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200


def test_routes_health_and_docs():
    c = client()
    c.post("/v1/tasks", json=body("detect"))
    routes = c.get("/v1/routes").json()
    assert routes["routes"]["POSE"] == "keypoints"
    assert routes["decoders"]["detector"]["calls"] == 1
    assert c.get("/healthz").json() == {"status": "ok"}
    schema = c.get("/openapi.json").json()
    content = schema["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert {"400", "401", "413", "422", "503"} <= set(schema["paths"]["/v1/tasks"]["post"]["responses"])
    assert "instruction" in schema["components"]["schemas"]["Request"]["properties"]
    assert c.get("/docs").status_code == 200


def _only_routes(routes: list[str]):

    return FakePipeline(deployed_routes=routes)


# ---- over the real tiny Pipeline (answers forced by ScriptedPipeline; everything else real) ----


@pytest.fixture(scope="module")
def tiny_client(scripted_pipeline):
    return TestClient(create_app(scripted_pipeline))


def test_tiny_compound_request_over_http(tiny_client):
    req = {"images": [b64(png(48, 48))], "instruction": "detect the stars, draw a green square", "options": {"steps": 1}}
    r = tiny_client.post("/v1/tasks", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["routes"] == ["DET", "GEN"] and out["errors"] == []
    assert out["detections"] and {d["phrase"] for d in out["detections"]} == {"stars"}
    assert len(out["images"]) == 1 and base64.b64decode(out["images"][0]["png_base64"])[:4] == b"\x89PNG"
    assert "[DET]" not in out["text"] and "[DET]" in out["raw_text"]


def test_tiny_unknown_route_is_422(tiny_client):
    r = tiny_client.post("/v1/tasks", json=body(options={"routes": ["COUNT"]}))
    assert r.status_code == 422 and "COUNT" in r.json()["detail"]


def test_tiny_region_outside_image_is_422(tiny_client):
    r = tiny_client.post("/v1/tasks", json=body("what is in <region>?", regions=[{"image": 0, "point": [100, 100]}]))
    assert r.status_code == 422 and "regions[0]" in r.json()["detail"]


def test_tiny_routes_lists_deployed_decoders(tiny_client):
    routes = tiny_client.get("/v1/routes").json()
    assert routes["routes"] == {"DET": "detector", "SEG": "detector", "GRD": "detector", "POSE": "keypoints", "GEN": "generator", "EDIT": "editor"}


def test_route_bound_to_missing_decoder_is_part_error():
    class Unbound(FakePipeline):
        def plan(self, prepared, generations):
            return {"counter": super().plan(prepared, generations)["detector"]}

    r = client(Unbound()).post("/v1/tasks", json=body("detect circles"))
    assert r.status_code == 200
    assert [(e["route"], e["kind"]) for e in r.json()["errors"]] == [("DET", "route_not_deployed")]


# ---- scribble region prompts ------------------------------------------------------------------
def test_tiny_scribble_request_over_http_is_answered(tiny_client):
    scribble = {"lines": [[[4, 30], [20, 24], [40, 28]], [[10, 10]]], "width": 5}
    r = tiny_client.post("/v1/tasks", json={"images": [b64(png(48, 48))], "instruction": "what is in <region>?",
                                            "regions": [{"image": 0, "scribble": scribble}]})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "an image" and r.json()["errors"] == []  # the scripted answer, after the real encoder


@pytest.mark.parametrize(
    ("scribble", "match"),
    [
        ({"lines": []}, "at least 1 item"),
        ({"lines": [[]]}, "polyline 0 is empty"),
        ({"lines": [[[1, 1], [60, 2]]]}, "outside the 48x48 image"),
        ({"lines": [[[1, 1]] * 1025]}, "at most 1024 are accepted"),
        ({"lines": [[[1, 1]]], "width": 0}, "greater than 0"),
        ({"lines": [[[1, 1]]], "width": 1000}, "less than or equal to 256"),
    ],
)
def test_tiny_bad_scribble_is_422(tiny_client, scribble, match):
    r = tiny_client.post("/v1/tasks", json={"images": [b64(png(48, 48))], "instruction": "what is in <region>?",
                                            "regions": [{"image": 0, "scribble": scribble}]})
    assert r.status_code == 422 and match in r.json()["detail"] and "regions" in r.json()["detail"], r.text
