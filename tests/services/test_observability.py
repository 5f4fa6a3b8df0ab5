"""Request ids (header, body, every log line), JSON logs and the Prometheus metrics on /metrics."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.config import HTTPConfig
from services.http import create_app
from services.observability import NullMetrics, configure_logging, log
from tests.doubles import FakePipeline


@pytest.fixture
def logs():
    buf = io.StringIO()
    handler = configure_logging(stream=buf)
    yield buf
    log.removeHandler(handler)


def client(engine=None, **http) -> TestClient:
    return TestClient(create_app(engine or FakePipeline(), HTTPConfig(**http)))


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_given_request_id_is_echoed_in_header_and_body():
    r = client().post("/v1/tasks", json={"instruction": "detect"}, headers={"X-Request-ID": "trace-42.a:b"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "trace-42.a:b" and r.json()["request_id"] == "trace-42.a:b"


def test_request_id_is_made_when_missing_or_unsafe():
    c = client()
    ids = []
    for given in (None, "has spaces and\tcontrol", "x" * 129):
        headers = {"X-Request-ID": given} if given else {}
        r = c.post("/v1/tasks", json={"instruction": "detect"}, headers=headers)
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid) and r.json()["request_id"] == rid
        ids.append(rid)
    assert len(set(ids)) == 3


def test_error_bodies_and_other_routes_carry_the_request_id(monkeypatch):
    monkeypatch.setenv("SUPERLINK_API_TOKEN", "t0ken")
    c = client()
    r = c.post("/v1/tasks", json={"instruction": ""}, headers={"Authorization": "Bearer t0ken", "X-Request-ID": "bad-1"})
    assert r.status_code == 422 and r.json()["request_id"] == "bad-1" and r.headers["x-request-id"] == "bad-1"
    r = c.post("/v1/tasks", json={"instruction": "detect"}, headers={"X-Request-ID": "noauth-1"})
    assert r.status_code == 401 and r.json()["request_id"] == "noauth-1" and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/healthz", headers={"X-Request-ID": "h-1"}).headers["x-request-id"] == "h-1"


def test_every_log_line_is_json_with_the_request_id(logs):
    c = client(FakePipeline(fail={"generator"}))
    c.post("/v1/tasks", json={"instruction": "detect, draw"}, headers={"X-Request-ID": "req-7"})
    c.post("/v1/tasks", json={"instruction": ""}, headers={"X-Request-ID": "req-8"})
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    by_id = {}
    for line in lines:
        by_id.setdefault(line["request_id"], []).append(line)
    assert set(by_id) == {"req-7", "req-8"}
    failure = next(x for x in by_id["req-7"] if x["message"] == "decoder failed")
    assert failure["decoder"] == "generator" and "broken on purpose" in failure["exc"]  # traceback in the log only
    access = [x for x in lines if x["message"] == "request"]
    assert [(x["request_id"], x["status"], x["path"]) for x in access] == [("req-7", 200, "/v1/tasks"), ("req-8", 422, "/v1/tasks")]
    assert all(x["level"] in ("info", "error") and isinstance(x["ts"], float) for x in lines)


def test_metrics_count_requests_errors_latency_decoders_batches_and_tokens():
    c = client()
    assert c.post("/v1/tasks", json={"instruction": "detect stars, draw a square"}).status_code == 200
    assert c.post("/v1/tasks", json={"instruction": "detect"}).status_code == 200
    assert c.post("/v1/tasks", json={"instruction": "   "}).status_code == 422
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    tasks = "/v1/tasks"
    assert m[("superlink_requests_total", (("route", tasks), ("status", "200")))] == 2
    assert m[("superlink_requests_total", (("route", tasks), ("status", "422")))] == 1
    assert m[("superlink_request_errors_total", (("route", tasks), ("status", "422")))] == 1
    assert m[("superlink_request_latency_seconds_count", (("route", tasks),))] == 3
    assert m[("superlink_decoder_calls_total", (("decoder", "detector"),))] == 2
    assert m[("superlink_decoder_calls_total", (("decoder", "generator"),))] == 1
    assert m[("superlink_decoder_latency_seconds_count", (("decoder", "generator"),))] == 1
    assert m[("superlink_batch_size_count", (("stage", "decoder:detector"),))] == 2
    assert m[("superlink_batch_size_count", (("stage", "mllm"),))] == 2  # the 422 never reached the model
    assert m[("superlink_queue_depth", (("stage", "decoder:detector"),))] == 0  # nothing waiting now
    assert m[("superlink_requests_in_flight", ())] == 1  # this /metrics request
    assert m[("superlink_generated_tokens_total", ())] > 0


def test_decoder_errors_are_counted_by_kind():
    c = client(FakePipeline(fail={"generator"}))
    c.post("/v1/tasks", json={"instruction": "draw a square"})
    m = samples(c.get("/metrics").text)
    assert m[("superlink_decoder_errors_total", (("decoder", "generator"), ("kind", "decoder_failed")))] == 1


def test_metrics_page_says_where_metrics_are_when_ray_exports_them():
    c = TestClient(create_app(FakePipeline(), metrics=NullMetrics()))
    r = c.get("/metrics")
    assert r.status_code == 404 and "Ray" in r.json()["detail"]


def test_two_apps_keep_separate_registries():
    a, b = client(), client()
    a.post("/v1/tasks", json={"instruction": "detect"})
    assert ("superlink_requests_total", (("route", "/v1/tasks"), ("status", "200"))) not in samples(b.get("/metrics").text)


def test_logging_setup_is_idempotent():
    h1 = configure_logging(stream=io.StringIO())
    h2 = configure_logging(stream=io.StringIO())
    try:
        assert h1 not in log.handlers and h2 in log.handlers and log.level == logging.INFO
    finally:
        log.removeHandler(h2)


def test_a_metrics_failure_never_fails_the_request():
    from services.observability import PrometheusMetrics

    broken = PrometheusMetrics()
    broken._m = {}  # every record raises KeyError inside
    r = TestClient(create_app(FakePipeline(), metrics=broken)).post("/v1/tasks", json={"instruction": "please reject this"})
    assert r.status_code == 422  # not a 500/503 from the metrics


def test_ray_metrics_skip_zero_counts():
    from services.observability import RayMetrics

    m = RayMetrics()
    m.inc("superlink_generated_tokens_total", 0.0)  # Ray's Counter raises on 0; a batch of rejected requests makes 0
    m.inc("superlink_generated_tokens_total", 3.0)
    m.observe("superlink_batch_size", 2, stage="mllm")
    m.add("superlink_queue_depth", 1, stage="mllm")
    m.add("superlink_queue_depth", -1, stage="mllm")
    assert m._gauges[("superlink_queue_depth", ("stage", "mllm"))] == 0
