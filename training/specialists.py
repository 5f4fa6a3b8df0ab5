"""Specialist ceilings: each task trained alone, scored with the same code as `superlink eval`.

Decoder specialists ([DET] [SEG] [GRD] [POSE] [GEN] [EDIT]) have no LLM at all. A `PhraseEncoder`
(learned word embeddings, mean-pooled or read by a one-layer text encoder) turns the reference phrase
(perception routes) or the prompt (generation, editing) straight into link vectors of the shape the
route's decoder expects, (Q, link_dim) with Q = model.routes[route]; they enter where the generalist's
projected link states do. Training uses the route binding's `train_batch` and the decoder's own loss,
exactly as the joint loss does (`router.loss.decoder_loss`), with the route's projector replaced by an
exact identity.

Language specialists (VQA, caption, native boxes) are the full SuperLink model of the config, trained
with the LM loss alone on one task.

Both are scored by `evaluation.suite`: the same val scenes (`eval_samples` at the same total `n`), the
same requests, the same Pipeline stages (prepare -> generate -> plan -> decoders -> assemble) and
`score_all`. A decoder specialist's pipeline "generates" the reference answer, with the encoder's
link vectors as the link states of its routing tokens, so what is measured is the decoder alone.

    spec = train_decoder_specialist(cfg, "DET", budget_s=360)
    evaluate_decoder_specialist(spec, n=500)   # {"det_ap": .., "det_ap50": .., ...}
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluation.suite import (
    FAMILIES,
    Scored,
    eval_samples,
    routed_phrases,
    run_samples,
    score_all,
    to_request,
)
from router.bindings import SuperLinkSystem, default_bindings
from router.config import StageConfig, SuperLinkConfig
from router.loss import collate, decoder_loss, joint_loss
from router.pipeline import Pipeline
from router.samples import TaskSample
from router.stages import GenerationResult, LinkRecord, Prepared
from router.system import build_system
from shapesworld.tasks import make_sample
from training.train import build_optimizer, build_scheduler, set_trainable

# route -> the ShapesWorld task (and eval family) that trains and scores it
DECODER_TASKS: dict[str, str] = {"DET": "detection", "SEG": "segmentation", "GRD": "grounding", "POSE": "keypoints",
                                 "GEN": "generation", "EDIT": "editing"}
LANGUAGE_TASKS: tuple[str, ...] = ("vqa", "caption", "native_detection")
# what each specialist is scored on (keys of evaluation.suite.score_all)
METRICS: dict[str, tuple[str, ...]] = {
    "DET": ("det_ap", "det_ap50"), "SEG": ("seg_ap",), "GRD": ("grd_acc50",), "POSE": ("pose_ap",),
    "GEN": ("gen_acc", "gen_object_f1", "gen_color_f1"), "EDIT": ("edit_acc",), "vqa": ("vqa_acc",), "caption": ("caption_f1",),
    "native_detection": ("native_det_ap",),
}
TARGET_METRICS: tuple[str, ...] = tuple(m for ms in METRICS.values() for m in ms)
# Relational referring expressions ("star to the left of the circle") and prompts need word order;
# category phrases ("red hexagon") do not.
DEFAULT_ENCODER: dict[str, str] = {"DET": "mean", "SEG": "mean", "POSE": "mean", "GRD": "attn", "GEN": "attn",
                                   "EDIT": "attn"}
ENCODERS = ("mean", "attn")
UNK = 0
TASK_INDEX = {t: i for i, t in enumerate(FAMILIES)}  # seeds a task's training batches
# budget clocks: wall time, or this process's CPU time (what a shared machine's other jobs do not eat into)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_WORD = re.compile(r"[a-z0-9]+")
_ROUTE_TOKEN = re.compile(r"\[([A-Z]+)\]")


def words(text: str) -> list[str]:
    """Lower-case word tokens; punctuation, casing and the <image> placeholder do not matter."""
    return _WORD.findall(text.replace("<image>", " ").lower())


class PhraseEncoder(nn.Module):
    """Texts -> (N, Q, C) link vectors with no LLM: one learned embedding per word, then either

    "mean": the mean of the words' embeddings plus one learned offset per link query, or
    "attn": word + position embeddings through one transformer encoder layer, read by Q learned
            queries with one cross-attention (a tiny text encoder that keeps word order).

    Words get ids on first sight while training (up to `capacity`); unseen words at eval map to UNK.
    """

    def __init__(self, queries: int, dim: int, mode: str = "mean", capacity: int = 2048, max_words: int = 64,
                 heads: int = 4) -> None:
        super().__init__()
        if mode not in ENCODERS:
            raise ValueError(f"unknown encoder {mode!r}; accepted: {', '.join(ENCODERS)}")
        if mode == "attn" and dim % heads:
            raise ValueError(f"link width {dim} is not divisible by {heads} attention heads")
        self.mode, self.capacity, self.max_words = mode, capacity, max_words
        self.vocab: dict[str, int] = {}
        self.embed = nn.Embedding(capacity, dim)
        self.query_embed = nn.Parameter(torch.randn(queries, dim) * 0.02)
        if mode == "attn":
            self.position = nn.Parameter(torch.randn(max_words, dim) * 0.02)
            self.encoder = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
            self.read = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm = nn.LayerNorm(dim)

    def ids(self, text: str) -> list[int]:
        out = []
        for w in words(text)[: self.max_words] or ["<empty>"]:
            if w not in self.vocab and self.training and len(self.vocab) + 1 < self.capacity:
                self.vocab[w] = len(self.vocab) + 1  # 0 is UNK
            out.append(self.vocab.get(w, UNK))
        return out

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids = [self.ids(t) for t in texts]
        length = max(len(i) for i in ids)
        device = self.embed.weight.device
        tok = torch.tensor([i + [UNK] * (length - len(i)) for i in ids], device=device)  # (N, L)
        pad = torch.tensor([[k >= len(i) for k in range(length)] for i in ids], device=device)  # (N, L)
        x = self.embed(tok)  # (N, L, C)
        queries = self.query_embed.expand(len(texts), -1, -1)  # (N, Q, C)
        if self.mode == "mean":
            keep = (~pad).unsqueeze(-1).float()
            pooled = (x * keep).sum(1) / keep.sum(1)  # (N, C)
            return pooled[:, None, :] + queries  # (N, Q, C)
        x = self.encoder(x + self.position[:length], src_key_padding_mask=pad)
        read, _ = self.read(queries, x, x, key_padding_mask=pad)
        return self.norm(queries + read)  # (N, Q, C)


def identity_projector(dim: int) -> nn.Module:
    """A frozen Linear that is exactly the identity: link vectors reach the decoder unchanged."""
    lin = nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
        lin.bias.zero_()
    lin.requires_grad_(False)
    return lin


def conditioning_text(route: str, sample: TaskSample, phrase: str) -> str:
    """What a decoder specialist is conditioned on: the routed phrase, or the prompt for [GEN] / [EDIT]
    (their phrases are just "image" / "edited image")."""
    return sample.instruction if route in ("GEN", "EDIT") else phrase


@dataclass
class Specialist:
    """A trained specialist: what it was trained on and for how long, and how to run it."""

    name: str  # route ("DET", ...) or language task ("vqa", ...)
    task: str  # ShapesWorld task / eval family
    cfg: SuperLinkConfig
    system: SuperLinkSystem
    processor: Any = None  # language specialists only
    encoder: PhraseEncoder | None = None  # decoder specialists only
    steps: int = 0
    train_s: float = 0.0  # wall seconds of training
    train_cpu_s: float | None = None  # CPU seconds of training (when the budget was CPU time)
    losses: list[float] = field(default_factory=list)  # one per step

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS[self.name]


def task_samples(cfg: SuperLinkConfig, task: str, step: int, seed: int,
                 wording: str = "template") -> list[TaskSample]:
    """Batch `step` of one task: a pure function of (seed, task, step), like training.train.batch_samples.

    `wording` words the instructions only (`shapesworld.tasks`): the scenes, targets and answers of a batch are
    the same whatever it is.
    """
    rng = np.random.default_rng([seed, TASK_INDEX[task], step])
    return [make_sample(task, rng, cfg.training.image_size, cfg.model.vocab.location_bins, wording)
            for _ in range(cfg.training.batch_size)]




# ---- decoder specialists -------------------------------------------------------------------------
def build_decoder_specialist(cfg: SuperLinkConfig, route: str, encoder: str | None = None) -> Specialist:
    """The route's decoder as configured (no MLLM is built), an identity projector and a PhraseEncoder."""
    if route not in DECODER_TASKS:
        raise ValueError(f"unknown decoder route {route!r}; accepted: {', '.join(DECODER_TASKS)}")
    if route not in cfg.model.routes:
        raise ValueError(f"route {route!r} is not declared in model.routes {list(cfg.model.routes)}")

    binding = default_bindings()[route]
    system, _ = build_system(cfg, bindings={route: binding}, decoders=[binding.decoder], with_model=False)
    dim = int(system.decoder_for(route).link_dim)
    system.projectors[route] = identity_projector(dim)
    enc = PhraseEncoder(cfg.model.routes[route], dim, encoder or DEFAULT_ENCODER[route])
    return Specialist(route, DECODER_TASKS[route], cfg, system, encoder=enc)


def decoder_specialist_loss(spec: Specialist, samples: Sequence[TaskSample]) -> torch.Tensor:
    """The route's decoder loss on `samples`, link vectors from the encoder (`router.loss.decoder_loss`)."""
    route = spec.name
    rows, targets, texts = [], [], []
    for r, s in enumerate(samples):
        for t in s.targets:
            if t.route == route:
                rows.append(r)
                targets.append(t)
                texts.append(conditioning_text(route, s, t.phrase))
    if not targets:
        raise ValueError(f"no {route} targets in the batch (task {spec.task!r})")
    states = spec.encoder(texts)  # (N, Q, C)
    return decoder_loss(spec.system, route, states, rows, targets, [s.image for s in samples])


def _params(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def _run_loop(spec: Specialist, loss_fn: Callable[[list[TaskSample]], torch.Tensor], opt: torch.optim.Optimizer,
              sched: Any, params: list[nn.Parameter], budget_s: float | None, steps: int | None, seed: int,
              log: Callable[[str], None] | None, clock: str = "wall") -> Specialist:
    """Train until `steps` or until `budget_s` seconds of `clock` ("wall", or "cpu": this process's CPU
    time, which a shared machine's other jobs do not eat into) have passed."""
    if budget_s is None and steps is None:
        raise ValueError("give a time budget (budget_s) or a number of steps")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; accepted: {', '.join(CLOCKS)}")
    clip = spec.cfg.training.max_grad_norm
    now = CLOCKS[clock]
    t0, c0 = time.perf_counter(), now()
    step = 0
    while (steps is None or step < steps) and (budget_s is None or now() - c0 < budget_s):
        torch.manual_seed(seed * 1_000_003 + step)  # diffusion noise / timesteps, as training.train.seed_step
        loss = loss_fn(task_samples(spec.cfg, spec.task, step, seed))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip)
        opt.step()
        sched.step()
        spec.losses.append(float(loss.detach()))
        step += 1
        if log and step % 100 == 0:
            log(f"{spec.name} step {step} loss {np.mean(spec.losses[-100:]):.4f} ({time.perf_counter() - t0:.0f}s)")
    spec.steps, spec.train_s, spec.train_cpu_s = step, round(time.perf_counter() - t0, 1), round(now() - c0, 1)
    if clock == "wall":
        spec.train_cpu_s = None
    return spec


def train_decoder_specialist(cfg: SuperLinkConfig, route: str, budget_s: float | None = None,
                             steps: int | None = None, seed: int = 0, encoder: str | None = None,
                             lr: float = 6e-4, encoder_lr: float = 1e-3, warmup: int = 200,
                             log: Callable[[str], None] | None = None, clock: str = "wall") -> Specialist:
    """AdamW on the decoder (lr: the joint stage's decoder rate) and the encoder (the queries' rate)."""
    torch.manual_seed(seed)
    spec = build_decoder_specialist(cfg, route, encoder)
    spec.system.train()
    spec.encoder.train()
    dec, enc = _params([spec.system.decoders]), _params([spec.encoder])
    opt = torch.optim.AdamW([{"params": dec, "lr": lr}, {"params": enc, "lr": encoder_lr}],
                            weight_decay=cfg.training.weight_decay)
    sched = build_scheduler(opt, StageConfig(name="specialist", steps=1, warmup_steps=warmup, lr={}))
    return _run_loop(spec, lambda s: decoder_specialist_loss(spec, s), opt, sched, dec + enc, budget_s, steps, seed,
                     log, clock)


class ReferencePipeline(Pipeline):
    """A pipeline whose "LLM" writes the reference answer and whose link states come from a PhraseEncoder.

    Everything after generation (plan, decoders, assemble) is the real Pipeline; no MLLM is built.
    Set `answers` (one per request, in order) before each call.
    """

    def __init__(self, spec: Specialist) -> None:
        super().__init__(spec.cfg, spec.system, None)
        self.spec = spec
        self.answers: list[tuple[TaskSample, str]] = []

    @torch.no_grad()
    def generate(self, prepared: Sequence[Prepared]) -> list[GenerationResult]:
        if len(self.answers) != len(prepared):
            raise RuntimeError(f"{len(prepared)} requests but {len(self.answers)} reference answers were set")
        self.spec.encoder.eval()
        out = []
        for p, (sample, answer) in zip(prepared, self.answers, strict=True):
            routes = _ROUTE_TOKEN.findall(answer)
            phrases = routed_phrases(answer)
            texts = [conditioning_text(r, sample, ph) for r, ph in zip(routes, phrases, strict=True)]
            states = self.spec.encoder(texts).float().cpu().numpy() if texts else []
            links = [LinkRecord(r, k, ph, states[k]) for k, (r, ph) in enumerate(zip(routes, phrases, strict=True))]
            out.append(GenerationResult(index=p.index, text=answer, links=links))
        return out


def run_reference(pipe: ReferencePipeline, pairs: Sequence[tuple[str, TaskSample]], batch_size: int = 16,
                  offset: int = 0) -> list[Scored]:
    """`evaluation.suite.run_samples` for a ReferencePipeline: the same requests, batches and Scored records."""
    out: list[Scored] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        requests = [to_request(f, s, offset + start + i) for i, (f, s) in enumerate(chunk)]
        pipe.answers = [(s, s.answer) for _, s in chunk]
        out += [Scored(f, s, r) for (f, s), r in zip(chunk, pipe(requests), strict=True)]
    return out


def family_pairs(cfg: SuperLinkConfig, family: str, split: str, n: int, seed: int) -> tuple[list, int]:
    """The val scenes of one family exactly as `superlink eval --n n` draws them, and their index offset
    in that run (request seeds, which fix [GEN] / [EDIT] noise, are the scene's position in the run)."""
    pairs = eval_samples(split, n, seed, cfg.training.image_size, cfg.model.vocab.location_bins)
    idx = [i for i, (f, _) in enumerate(pairs) if f == family]
    return [pairs[i] for i in idx], (idx[0] if idx else 0)


def evaluate_decoder_specialist(spec: Specialist, split: str = "val", n: int = 500, seed: int = 0,
                                batch_size: int = 16) -> dict[str, Any]:
    """The specialist's metrics on the family's val scenes of `superlink eval --n n`."""
    pairs, offset = family_pairs(spec.cfg, spec.task, split, n, seed)
    pipe = ReferencePipeline(spec)
    try:
        scored = run_reference(pipe, pairs, batch_size, offset)
    finally:
        pipe.close()
    return _pick(spec, score_all(scored, spec.cfg.model.vocab.location_bins), scored)


def _pick(spec: Specialist, scores: dict[str, Any], scored: Sequence[Scored]) -> dict[str, Any]:
    out = {m: None if scores[m] is None else round(float(scores[m]), 4) for m in spec.metrics}
    errors = sum(len(s.response.errors) for s in scored)
    return {**out, "scenes": len(scored), "errors": errors}


# ---- language specialists ------------------------------------------------------------------------
def train_language_specialist(cfg: SuperLinkConfig, task: str, budget_s: float | None = None,
                              steps: int | None = None, seed: int = 0,
                              log: Callable[[str], None] | None = None, clock: str = "wall") -> Specialist:
    """The config's SuperLink model (no decoders) trained on `task` alone with the LM loss, at the rates
    of the config's first LM-only stage (else its first stage)."""
    if task not in LANGUAGE_TASKS:
        raise ValueError(f"unknown language task {task!r}; accepted: {', '.join(LANGUAGE_TASKS)}")
    torch.manual_seed(seed)
    system, processor = build_system(cfg, decoders=[])
    stages = cfg.training.stages
    stage = next((s for s in stages if not s.decoder_losses), stages[0])
    spec = Specialist(task, task, cfg, system, processor=processor)
    system.train()
    set_trainable(system, stage, {})
    opt = build_optimizer(system, stage, cfg.training.weight_decay)
    sched = build_scheduler(opt, stage)
    params = [p for p in system.parameters() if p.requires_grad]

    def loss_fn(samples: list[TaskSample]) -> torch.Tensor:
        return joint_loss(system, collate(processor, samples), decoders=False).total

    return _run_loop(spec, loss_fn, opt, sched, params, budget_s, steps, seed, log, clock)


def evaluate_language_specialist(spec: Specialist, split: str = "val", n: int = 500, seed: int = 0,
                                 batch_size: int = 16) -> dict[str, Any]:
    """The model generates for real through the Pipeline, as `superlink eval` runs it."""
    pairs, _ = family_pairs(spec.cfg, spec.task, split, n, seed)
    pipe = Pipeline(spec.cfg, spec.system, spec.processor)
    try:
        scored = run_samples(pipe, pairs, batch_size)
    finally:
        pipe.close()
    return _pick(spec, score_all(scored, spec.cfg.model.vocab.location_bins), scored)


def train_specialist(cfg: SuperLinkConfig, name: str, **kw: Any) -> Specialist:
    if name in DECODER_TASKS:
        return train_decoder_specialist(cfg, name, **kw)
    kw.pop("encoder", None)
    return train_language_specialist(cfg, name, **kw)


def evaluate_specialist(spec: Specialist, **kw: Any) -> dict[str, Any]:
    fn = evaluate_decoder_specialist if spec.encoder is not None else evaluate_language_specialist
    return fn(spec, **kw)


def ratios(specialist: dict[str, float | None], generalist: dict[str, float | None]) -> dict[str, float | None]:
    """generalist / specialist per target metric (None when either is missing or the specialist scored 0)."""
    out = {}
    for m in TARGET_METRICS:
        s, g = specialist.get(m), generalist.get(m)
        out[m] = None if s is None or g is None or s == 0 else round(g / s, 3)
    return out
