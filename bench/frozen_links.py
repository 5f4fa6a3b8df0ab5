"""Is it the link or the decoder? A fresh detector trained on a trained model's frozen link states.

    python bench/frozen_links.py [--model shapes] [--route DET] [--link states|states+phrase|phrase]
                                 [--steps 1500] [--scenes 200] [--keep] [--json]

Loads the model (the LLM and its queries stay frozen), replaces the route's decoder (the detector) and
projector by fresh ones (or keeps the trained ones with --keep) and trains only those, with the route's
decoder loss, on the link states the frozen LLM computes for teacher-forced training samples of the
route's task (AdamW, the joint stage's rates: decoder 6e-4, projector 1e-3, batch of the config). Then
scores the route's family on `--scenes` val scenes through the real pipeline (generation, links, decoder),
and again teacher-forced (the reference answers, so no phrase errors), so that a gap between the two is
the LLM's wording and a gap to `bench/specialists.py` at equal steps is what the link states carry.

What the decoder is conditioned on (--link):
  states         the LLM's link states at the route's query slots (as the system does)
  states+phrase  those plus one more row: the mean of the LLM's own input embeddings of the phrase's tokens
  phrase         that row alone (a specialist's phrase encoder, with the LLM's frozen embeddings)

With --json the last line is one JSON object: route, link, steps, loss_last100, train_s, and for "generated"
and "forced" the family's metrics (e.g. det_ap, det_ap50, det_ap_agnostic, phrase_acc).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

# bench/decoders.py would shadow the `decoders` package: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import router.pipeline as pipeline_module  # noqa: E402
from evaluation.suite import evaluate_pipeline  # noqa: E402
from router.bindings import build_detector  # noqa: E402
from router.config import StageConfig  # noqa: E402
from router.loss import collate, decoder_loss, model_inputs, route_targets  # noqa: E402
from router.pipeline import Pipeline  # noqa: E402
from router.projectors import SkipProjector  # noqa: E402
from training.specialists import DECODER_TASKS, task_samples  # noqa: E402
from training.train import build_scheduler  # noqa: E402

ROUTES = ("DET", "SEG", "GRD")  # the routes on the detector
LINKS = ("states", "states+phrase", "phrase")
KEYS = {"DET": ("det_ap", "det_ap50", "det_ap_agnostic", "phrase_acc"), "SEG": ("seg_ap", "phrase_acc"),
        "GRD": ("grd_acc50",)}


class PhraseRows:
    """The mean of the model's input embeddings of a phrase's tokens, one (1, D) row per phrase (frozen)."""

    def __init__(self, model) -> None:
        self.tokenizer = model.tokenizer
        self.weight = model.llava.get_input_embeddings().weight.detach()

    def __call__(self, phrases: list[str]) -> torch.Tensor:
        rows = []
        for p in phrases:
            ids = self.tokenizer(p.lower(), add_special_tokens=False).input_ids or [self.tokenizer.unk_token_id or 0]
            rows.append(self.weight[torch.tensor(ids)].mean(0))
        return torch.stack(rows)[:, None, :]  # (N, 1, D)


def conditioning(link: str, states: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(N, Q, D) link states and (N, 1, D) phrase rows -> what the projector gets."""
    if link == "states":
        return states
    return rows if link == "phrase" else torch.cat([states, rows], 1)


def train(pipe: Pipeline, route: str, link: str, steps: int, keep: bool, seed: int = 0) -> tuple[list[float], float]:
    system, cfg = pipe.system, pipe.config
    model = system.model
    if not keep:
        torch.manual_seed(seed)
        system.decoders["detector"] = build_detector(cfg)
        system.projectors[route] = SkipProjector(model.config.text.hidden_size, int(system.decoders["detector"].link_dim))
    model.eval().requires_grad_(False)
    detector, projector = system.decoders["detector"], system.projectors[route]
    detector.train().requires_grad_(True)
    projector.train().requires_grad_(True)
    opt = torch.optim.AdamW([{"params": list(detector.parameters()), "lr": 6e-4},
                             {"params": list(projector.parameters()), "lr": 1e-3}], weight_decay=cfg.training.weight_decay)
    sched = build_scheduler(opt, StageConfig(name="frozen_links", steps=1, warmup_steps=min(200, steps // 5), lr={}))
    params = [p for g in opt.param_groups for p in g["params"]]
    phrase_rows = PhraseRows(model)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        torch.manual_seed(seed * 1_000_003 + step)
        samples = task_samples(cfg, DECODER_TASKS[route], step, seed)
        with torch.no_grad():
            out = model(**model_inputs(collate(pipe.processor, samples).inputs))
        links = out.link_states[route]
        rows, targets = route_targets(samples, route, links.index)
        x = conditioning(link, links.states, phrase_rows([t.phrase for t in targets]))
        loss = decoder_loss(system, route, x, rows, targets, [s.image for s in samples])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.training.max_grad_norm or 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    system.eval()
    return losses, time.perf_counter() - t0


def patch_route_inputs(pipe: Pipeline, route: str, link: str) -> None:
    """At inference the route's calls get the same conditioning as in training (the phrase row appended)."""
    if link == "states":
        return
    phrase_rows, run_route = PhraseRows(pipe.system.model), pipeline_module.run_route

    def with_rows(system, name, calls):
        if name == route:
            rows = phrase_rows([c.phrase for c in calls]).numpy()
            calls = [dataclasses.replace(c, states=conditioning(link, torch.from_numpy(np.asarray(c.states))[None],
                                                                torch.from_numpy(rows[i])[None])[0].numpy())
                     for i, c in enumerate(calls)]
        return run_route(system, name, calls)

    pipeline_module.run_route = with_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes", help="a preset name or a saved model folder")
    ap.add_argument("--route", default="DET", choices=ROUTES)
    ap.add_argument("--link", default="states", choices=LINKS)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--scenes", type=int, default=200, help="val scenes of the route's family")
    ap.add_argument("--keep", action="store_true", help="continue the trained decoder and projector")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pipe = Pipeline.from_pretrained(args.model)
    losses, train_s = train(pipe, args.route, args.link, args.steps, args.keep, args.seed)
    patch_route_inputs(pipe, args.route, args.link)
    result: dict = {"model": args.model, "route": args.route, "link": args.link, "steps": args.steps, "keep": args.keep,
                    "loss_last100": round(float(np.mean(losses[-100:])), 4) if losses else None,
                    "train_s": round(train_s, 1), "scenes": args.scenes}
    family = DECODER_TASKS[args.route]
    for name, forced in (("generated", False), ("forced", True)):
        r = evaluate_pipeline(pipe, n=args.scenes, families=(family,), teacher_force=forced, wording="template")
        result[name] = {k: r.get(k) for k in KEYS[args.route]}
        print(f"{name}: {result[name]}", flush=True)
    pipe.close()
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
