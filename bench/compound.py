"""Benchmark: one compound request that needs three decoders, concurrent vs serial decoder calls.

    python bench/compound.py --preset tiny [--json] [--repeats 5] [--steps 20] [--threads 1]

The request asks to detect, to generate and to edit ("Detect the stars, draw a green square and
make the circle blue"); the random-weight tiny model is teacher-forced through generate (a logits
hook) to answer "Sure, the stars [DET], a green square [GEN] and the circle blue [EDIT].", so the
routing tokens fire for real and their link states go to the detector, the generator and the editor.

Measured per repeat (medians reported):
  end_to_end_ms      Pipeline.__call__: prepare, one batched generate, decoders concurrently, assemble
  llm_ms             preprocess + generate inside that call
  decoder_alone_ms   each decoder's calls run on their own (same thread setting)
  decoder_in_concurrent_call_ms  each decoder's time inside the concurrent call (> alone: CPU was shared)
  serial_ms          the same request with the decoders called one after another (as VisionLLM v2 does)
  ratio_to_critical_path = end_to_end / (llm + slowest decoder alone)
  speedup_vs_serial      = serial / end_to_end
With --json the last line is one JSON object with these fields.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: import from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from router.pipeline import Pipeline, forced_answer_hook  # noqa: E402
from router.schemas import Request  # noqa: E402

INSTRUCTION = "Detect the stars, draw a green square and make the circle blue."
ANSWER = "Sure, the stars [DET], a green square [GEN] and the circle blue [EDIT]."


def scene_png(size: int = 128) -> bytes:
    from shapesworld.scene import render, sample_scene

    buf = io.BytesIO()
    Image.fromarray(render(sample_scene(np.random.default_rng(0), size))).save(buf, format="PNG")
    return buf.getvalue()


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def serial_call(pipe: Pipeline, req: Request) -> float:
    """The whole request with decoders one after another; returns wall ms."""
    t0 = time.perf_counter()
    prepared = pipe.prepare([req])
    gens = pipe.generate(prepared)
    results = pipe.run_decoders(pipe.plan(prepared, gens), concurrent=False)
    pipe.assemble(prepared, gens, results, {})
    return ms(t0)


def decoders_alone(pipe: Pipeline, req: Request) -> dict[str, float]:
    prepared = pipe.prepare([req])
    calls = pipe.plan(prepared, pipe.generate(prepared))
    out = {}
    for name, c in calls.items():
        t0 = time.perf_counter()
        pipe.run_decoders({name: c}, concurrent=False)
        out[name] = ms(t0)
    return out


def measure(pipe: Pipeline, req: Request, repeats: int) -> dict:
    e2e, llm, serial, alone, inside = [], [], [], {}, {}
    for _ in range(repeats):  # interleaved, so load changes on this shared machine hit every mode alike
        t0 = time.perf_counter()
        resp = pipe(req)
        e2e.append(ms(t0))
        llm.append(resp.timings_ms["preprocess"] + resp.timings_ms["generate"])
        for name in pipe.system.decoders:
            if name in resp.timings_ms:
                inside.setdefault(name, []).append(resp.timings_ms[name])
        if resp.errors or len(resp.routes) != 3:
            raise RuntimeError(f"the compound request did not run cleanly: routes {resp.routes}, errors {resp.errors}")
        serial.append(serial_call(pipe, req))
        for name, t in decoders_alone(pipe, req).items():
            alone.setdefault(name, []).append(t)
    med = statistics.median
    alone_med = {k: round(med(v), 1) for k, v in alone.items()}
    critical = med(llm) + max(alone_med.values())
    return {
        "decoders_called": len(alone_med),
        "routes": resp.routes,
        "end_to_end_ms": round(med(e2e), 1),
        "llm_ms": round(med(llm), 1),
        "decoder_alone_ms": alone_med,
        "decoder_in_concurrent_call_ms": {k: round(med(v), 1) for k, v in inside.items()},
        "serial_ms": round(med(serial), 1),
        "critical_path_ms": round(critical, 1),
        "ratio_to_critical_path": round(med(e2e) / critical, 3),
        "speedup_vs_serial": round(med(serial) / med(e2e), 3),
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="diffusion steps for [GEN]/[EDIT] (the request option)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per thread of work")
    ap.add_argument("--concurrency", choices=["process", "thread"], default="process",
                    help="how the pipeline runs independent decoders side by side (the other mode is reported too)")
    ap.add_argument("--json", action="store_true", help="last line is one JSON object")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = Pipeline.from_pretrained(args.preset)
    pipe.config.runtime.torch_threads_per_decoder = args.threads
    pipe.logits_hook = forced_answer_hook(pipe.processor.tokenizer, [ANSWER])
    req = Request(images=[scene_png()], instruction=INSTRUCTION, options={"seed": 0, "steps": args.steps})
    other = "thread" if args.concurrency == "process" else "process"
    measured = {}
    for mode in (other, args.concurrency):
        pipe.close()
        pipe.config.runtime.decoder_concurrency = mode
        for _ in range(2):  # warm-up: first calls start the workers and build the diffusers pipelines
            pipe(req)
            serial_call(pipe, req)
        measured[mode] = measure(pipe, req, args.repeats)
    pipe.close()
    keep = ("end_to_end_ms", "ratio_to_critical_path", "speedup_vs_serial")
    result = {"preset": args.preset, "steps": args.steps, "threads": args.threads, "cpus": os.cpu_count(),
              "concurrency": args.concurrency, **measured[args.concurrency],
              other: {k: measured[other][k] for k in keep}}
    for k, v in result.items():
        print(f"{k}: {v}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
