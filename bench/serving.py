"""Serving benchmark: HTTP latency and throughput, in-process Pipeline vs Ray Serve, batching on and off.

    python bench/serving.py --preset tiny [--quick] [--json]

Every request is "detect the stars" on a 48x48 image. The tiny model's answer is forced
(tests.doubles.ScriptedPipeline) so [DET] fires and the detector really runs.
Backends, each over HTTP on loopback:
  in-process        uvicorn + services.http.create_app(Pipeline) in this process
  ray-batching      Ray Serve (ingress -> MLLM -> detector deployments), @serve.batch on
  ray-no-batching   the same with batching off
With --json the last line is one JSON object: requests_total, requests_ok, max_decoder_batch,
added_p50_ms (ray-batching p50 - in-process p50 at concurrency 1), and every run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Ray replicas import the engine factory (tests.doubles) by name: they need the checkout on their path too.
RAY_ENV = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}}

from services.http import BackgroundServer, create_app  # noqa: E402
from tests.doubles import ScriptedPipeline  # noqa: E402

CONCURRENCY = (1, 8, 32)
OPTIONS = {"max_new_tokens": 24}


def scene() -> str:
    import base64

    img = Image.new("RGB", (48, 48), "white")
    ImageDraw.Draw(img).polygon([(24, 4), (30, 40), (6, 16), (42, 16), (18, 40)], fill="gold")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def request_body() -> dict[str, Any]:
    return {"images": [scene()], "instruction": "detect the stars", "options": OPTIONS}


async def load(url: str, concurrency: int, n: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """n requests from `concurrency` workers in a closed loop; latency per request and throughput."""
    body, latencies, statuses = request_body(), [], []
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers=headers) as client:

        async def worker() -> None:
            for _ in todo:
                t0 = time.perf_counter()
                r = await client.post("/v1/tasks", json=body)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                statuses.append(r.status_code == 200 and not r.json()["errors"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"concurrency": concurrency, "n": n, "ok": sum(statuses), "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(q[98], 1), "rps": round(n / wall, 2)}  # fmt: skip


def run_backend(name: str, url: str, counts: dict[int, int]) -> list[dict[str, Any]]:
    asyncio.run(load(url, 1, 3))  # warm-up: first calls build caches and threads
    runs = []
    for c in CONCURRENCY:
        r = {"backend": name, **asyncio.run(load(url, c, counts[c]))}
        print(f"{name:16s} c={c:<3d} n={r['n']:<4d} ok={r['ok']:<4d} p50={r['p50_ms']:8.1f} ms "
              f"p99={r['p99_ms']:8.1f} ms  {r['rps']:6.2f} req/s", flush=True)  # fmt: skip
        runs.append(r)
    return runs


def serve_config(model_dir: Path, batching: bool) -> dict[str, Any]:
    batch = {"enabled": batching, "max_batch_size": 16, "batch_wait_timeout_s": 0.002}
    replica = {"ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 64, "batching": batch}
    return {"model": str(model_dir), "engine_factory": "tests.doubles:scripted_engine", "routes": ["DET"],
            "ingress": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 128},
            "mllm": replica, "decoders": {"detector": replica}}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_ray(model_dir: Path, counts: dict[int, int]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Both Ray variants on one Ray instance; returns the runs and the max decoder batch of each."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from services.app import build_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=RAY_ENV)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url, runs, batches = f"http://127.0.0.1:{port}", [], {}
    try:
        for batching in (True, False):
            name = "ray-batching" if batching else "ray-no-batching"
            serve.run(build_app(serve_config(model_dir, batching)), name="superlink", route_prefix="/")
            runs += run_backend(name, url, counts)
            batches[name] = httpx.get(f"{url}/v1/routes").json()["decoders"]["detector"]["max_batch"]
    finally:
        serve.shutdown()
        ray.shutdown()
    return runs, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--quick", action="store_true", help="fewer requests per level (a few minutes)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    counts = {1: 12, 8: 32, 32: 64} if args.quick else {1: 40, 8: 120, 32: 256}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        pipeline = ScriptedPipeline.from_pretrained(args.preset)
        pipeline.save_pretrained(model_dir)
        with BackgroundServer(create_app(ScriptedPipeline.from_pretrained(model_dir))) as url:
            runs = run_backend("in-process", url, counts)
        ray_runs, batches = bench_ray(model_dir, counts)
    runs += ray_runs
    p50 = {(r["backend"], r["concurrency"]): r["p50_ms"] for r in runs}
    summary = {
        "preset": args.preset,
        "requests_total": sum(r["n"] for r in runs),
        "requests_ok": sum(r["ok"] for r in runs),
        "max_decoder_batch": batches["ray-batching"],
        "max_decoder_batch_no_batching": batches["ray-no-batching"],
        "added_p50_ms": round(p50[("ray-batching", 1)] - p50[("in-process", 1)], 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "runs": runs,
    }
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
