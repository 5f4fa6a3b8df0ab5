"""Streaming benchmark: when each part of a compound answer reaches the client, streamed vs not.

    python bench/streaming.py [--model shapes] [--repeats 3] [--json]

One uvicorn server on loopback over the in-process Pipeline (the shipped `shapes` model by default),
the web page's first example: scene A with "Do three things: segment every square; find the red star;
draw a green circle and two yellow squares." ([SEG] + [GRD] on the detector, [GEN] on the generator).
Each repeat sends it once with `"stream": true` (recording when the first `generating` event, the
`text` event, each decoder's `part` and the final `response` arrive, in ms after sending) and once
plain (the whole answer at once). Medians over the repeats. With --json the last line is one JSON
object: first_token_ms, text_ms, detector_part_ms, generator_part_ms, stream_total_ms, plain_total_ms,
detections_ahead_ms (plain_total_ms - detector_part_ms: how much sooner the boxes and masks are seen).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.pipeline import Pipeline  # noqa: E402
from services.http import BackgroundServer, create_app  # noqa: E402
from services.web.examples import EXAMPLES_DIR  # noqa: E402


def _request() -> dict:
    example = json.loads((EXAMPLES_DIR / "examples.json").read_text())["examples"][0]
    image = base64.b64encode((EXAMPLES_DIR / example["file"]).read_bytes()).decode()
    return {"images": [image], "instruction": example["instructions"][0], "options": {"seed": 0, "max_new_tokens": 96}}


def streamed(url: str, body: dict) -> dict[str, float]:
    """ms after sending at which each event first arrived (`part:<decoder>` for parts)."""
    seen: dict[str, float] = {}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/tasks", json={**body, "stream": True}, timeout=300) as resp:
        resp.raise_for_status()
        event = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                key = f"part:{json.loads(line[6:])['decoder']}" if event == "part" else event
                seen.setdefault(key, (time.perf_counter() - t0) * 1000.0)
    return seen


def plain(url: str, body: dict) -> float:
    t0 = time.perf_counter()
    httpx.post(f"{url}/v1/tasks", json=body, timeout=300).raise_for_status()
    return (time.perf_counter() - t0) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    body = _request()
    runs, plains = [], []
    with BackgroundServer(create_app(Pipeline.from_pretrained(args.model))) as url:
        plain(url, body)  # warm-up
        for _ in range(args.repeats):
            runs.append(streamed(url, body))
            plains.append(plain(url, body))
    med = lambda key: round(statistics.median(r[key] for r in runs), 1)  # noqa: E731
    out = {
        "model": args.model, "repeats": args.repeats, "instruction": body["instruction"],
        "first_token_ms": med("generating"), "text_ms": med("text"), "detector_part_ms": med("part:detector"),
        "generator_part_ms": med("part:generator"), "stream_total_ms": med("response"),
        "plain_total_ms": round(statistics.median(plains), 1),
    }  # fmt: skip
    out["detections_ahead_ms"] = round(out["plain_total_ms"] - out["detector_part_ms"], 1)
    for k, v in out.items():
        print(f"{k:>20}: {v}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
