"""Teacher decoders and link alignment: VisionLLM v2's staged recipe for the perception links.

VisionLLM v2 trains a decoder on a frozen text encoder's features first and only then pulls the
LLM's mapped link states towards those features. Here the "text encoder" is a `PhraseEncoder` trained
together with the decoder (a decoder specialist, `training.specialists`) and then frozen:

1. `train_teacher(cfg, ("DET", "SEG", "GRD"))`: the routes' decoders as configured (routes that share a
   decoder share it here too) trained on their ShapesWorld tasks, conditioned on the reference phrase
   through phrase encoders, one per (decoder, encoder kind): [DET] and [SEG] read the same category
   phrases through one "mean" encoder, [GRD]'s referring expressions go through an "attn" one.
2. `align_links(pipe, teacher)`: the teacher's decoders replace the model's, and the routes' projectors
   (optionally the LLM and the queries too) learn to map the LLM's link states onto the frozen encoder's
   vectors for the same phrase (MSE on teacher-forced training samples). The decoders never see a
   link vector that was not shaped like the conditioning they were trained on.

    teacher = train_teacher(cfg, ("DET", "SEG", "GRD"), budget_s=1200, clock="cpu")
    teacher.save("runs/teacher_det")
    pipe = Pipeline.from_pretrained("shapes")
    align_links(pipe, Teacher.load("runs/teacher_det"), steps=600)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from router.bindings import SuperLinkSystem, default_bindings, target_texts
from router.config import StageConfig, SuperLinkConfig, load_config
from router.loss import collate, decoder_loss, model_inputs, route_targets
from router.system import build_system
from training.specialists import (
    CLOCKS,
    DECODER_TASKS,
    DEFAULT_ENCODER,
    PhraseEncoder,
    Specialist,
    conditioning_text,
    evaluate_decoder_specialist,
    identity_projector,
    task_samples,
)
from training.train import batch_samples, build_scheduler, is_connector

REPLAY_OFFSET = 2_000_000  # align_links' replay batches: batch_samples steps far past any training run's
TRAINING_WORDINGS = ("template", "train", "noisy", "noisy_mixed")  # anchor_links' model wordings: no held-out one
PERCEPTION = ("DET", "SEG", "GRD", "POSE")  # the routes a teacher can train (category or referring phrases)
IMAGE_ROUTES = ("GEN", "EDIT")  # the routes align_image_links fits to the frozen text encoder
TEACHER_FILE, ENCODERS_FILE, META_FILE = "decoders.safetensors", "encoders.safetensors", "teacher.json"


def encoder_key(system: SuperLinkSystem, route: str, mode: str) -> str:
    """Routes on one decoder with one encoder kind share the encoder ("detector_mean")."""
    return f"{system.binding(route).decoder}_{mode}"


@dataclass
class Teacher:
    """Decoders trained on phrase-encoder conditioning, and the (then frozen) encoders."""

    cfg: SuperLinkConfig
    routes: tuple[str, ...]
    system: SuperLinkSystem  # the routes' decoders, identity projectors, no MLLM
    encoders: dict[str, PhraseEncoder]  # encoder_key -> encoder
    modes: dict[str, str]  # route -> encoder kind
    steps: int = 0
    train_s: float = 0.0
    losses: dict[str, list[float]] = field(default_factory=dict)  # route -> loss per step of that route

    def encoder(self, route: str) -> PhraseEncoder:
        return self.encoders[encoder_key(self.system, route, self.modes[route])]

    @torch.no_grad()
    def targets(self, route: str, texts: Sequence[str]) -> torch.Tensor:
        """The frozen encoder's (N, Q, C) link vectors for `texts` (what the aligned projector must give)."""
        enc = self.encoder(route)
        enc.eval()
        return enc(list(texts))

    def specialist(self, route: str) -> Specialist:
        """The route as a decoder specialist (for `training.specialists.evaluate_decoder_specialist`)."""
        return Specialist(route, DECODER_TASKS[route], self.cfg, self.system, encoder=self.encoder(route),
                          steps=self.steps, train_s=self.train_s)

    def evaluate(self, route: str, n: int = 500, split: str = "val", seed: int = 0) -> dict[str, Any]:
        self.system.eval()
        return evaluate_decoder_specialist(self.specialist(route), split=split, n=n, seed=seed)

    # ---- persistence -------------------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_model(self.system.decoders, str(out / TEACHER_FILE))
        save_model(nn.ModuleDict(self.encoders), str(out / ENCODERS_FILE))
        meta = {"routes": list(self.routes), "modes": self.modes, "steps": self.steps, "train_s": self.train_s,
                "vocab": {key: e.vocab for key, e in self.encoders.items()},
                "loss_last100": {r: float(np.mean(v[-100:])) for r, v in self.losses.items() if v}}
        (out / META_FILE).write_text(json.dumps(meta, indent=1))
        (out / "superlink.yaml").write_text(self.cfg_yaml())
        return out

    def cfg_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path, cfg: SuperLinkConfig | None = None) -> Teacher:
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a teacher folder (no {META_FILE}); write one with Teacher.save")
        meta = json.loads((path / META_FILE).read_text())
        cfg = cfg or load_config(path / "superlink.yaml")
        teacher = build_teacher(cfg, tuple(meta["routes"]), meta["modes"])
        load_model(teacher.system.decoders, str(path / TEACHER_FILE))
        load_model(nn.ModuleDict(teacher.encoders), str(path / ENCODERS_FILE))
        for key, e in teacher.encoders.items():
            e.vocab = dict(meta["vocab"][key])
        teacher.steps, teacher.train_s = int(meta["steps"]), float(meta["train_s"])
        return teacher


def build_teacher(cfg: SuperLinkConfig, routes: Sequence[str], modes: dict[str, str] | None = None) -> Teacher:
    """The routes' decoders as the config builds them, identity projectors, and their phrase encoders."""
    bad = [r for r in routes if r not in PERCEPTION or r not in cfg.model.routes]
    if bad or not routes:
        raise ValueError(f"teacher routes {list(bad or routes)} are not perception routes of the model; "
                         f"accepted: {', '.join(r for r in PERCEPTION if r in cfg.model.routes)}")
    table = default_bindings()
    bindings = {r: table[r] for r in routes}
    system, _ = build_system(cfg, bindings=bindings, decoders=sorted({b.decoder for b in bindings.values()}),
                             with_model=False)
    modes = {r: (modes or {}).get(r, DEFAULT_ENCODER[r]) for r in routes}
    encoders: dict[str, PhraseEncoder] = {}
    for r in routes:
        dim = int(system.decoder_for(r).link_dim)
        system.projectors[r] = identity_projector(dim)
        key = encoder_key(system, r, modes[r])
        if key in encoders and encoders[key].query_embed.shape[0] != cfg.model.routes[r]:
            raise ValueError(f"routes sharing encoder {key} have different query counts")
        encoders.setdefault(key, PhraseEncoder(cfg.model.routes[r], dim, modes[r]))
    return Teacher(cfg, tuple(routes), system, encoders, modes)


def train_teacher(cfg: SuperLinkConfig, routes: Sequence[str], budget_s: float | None = None,
                  steps: int | None = None, seed: int = 0, modes: dict[str, str] | None = None,
                  lr: float = 6e-4, encoder_lr: float = 1e-3, warmup: int = 200, clock: str = "cpu",
                  log: Callable[[str], None] | None = None, init: Teacher | None = None,
                  lr_schedule: str = "constant") -> Teacher:
    """AdamW on the decoders and encoders; step k trains on a batch of route routes[k % len(routes)]'s task
    (batches as `training.specialists.task_samples`, so a one-route teacher sees a specialist's batches).

    init: a trained teacher of the same routes to go on training (its weights, a fresh optimizer); step
    numbers, and so the batches, continue after its `steps`, and `steps`/`budget_s` count the new ones only.
    lr_schedule: "constant" after the warm-up, or "cosine" down to 5% at the last of `steps` (an annealed end;
    needs `steps`).
    """
    if budget_s is None and steps is None:
        raise ValueError("give a time budget (budget_s) or a number of steps")
    if lr_schedule == "cosine" and steps is None:
        raise ValueError("lr_schedule 'cosine' needs a number of steps to decay over, not a time budget")
    if init is not None and tuple(init.routes) != tuple(routes):
        raise ValueError(f"the teacher to go on from trains routes {list(init.routes)}, not {list(routes)}")
    torch.manual_seed(seed)
    teacher = build_teacher(cfg, routes, modes) if init is None else init
    teacher.system.train()
    params = [p for m in [teacher.system.decoders, *teacher.encoders.values()] for p in m.parameters()
              if p.requires_grad]
    dec = [p for p in teacher.system.decoders.parameters() if p.requires_grad]
    enc = [p for e in teacher.encoders.values() for p in e.parameters()]
    opt = torch.optim.AdamW([{"params": dec, "lr": lr}, {"params": enc, "lr": encoder_lr}],
                            weight_decay=cfg.training.weight_decay)
    sched = build_scheduler(opt, StageConfig(name="teacher", steps=steps or 1, warmup_steps=warmup, lr={},
                                             lr_schedule=lr_schedule))
    clip, now = cfg.training.max_grad_norm, CLOCKS[clock]
    start = 0 if init is None else init.steps
    t0, c0, step = time.perf_counter(), now(), start
    prior_s = 0.0 if init is None else init.train_s
    teacher.losses = {r: [] for r in routes}
    while (steps is None or step - start < steps) and (budget_s is None or now() - c0 < budget_s):
        route = routes[step % len(routes)]
        torch.manual_seed(seed * 1_000_003 + step)
        samples = task_samples(cfg, DECODER_TASKS[route], step // len(routes), seed)
        enc_r = teacher.encoder(route)
        enc_r.train()
        rows, targets, texts = [], [], []
        for i, s in enumerate(samples):
            for t in s.targets:
                if t.route == route:
                    rows.append(i)
                    targets.append(t)
                    texts.append(conditioning_text(route, s, t.phrase))
        loss = decoder_loss(teacher.system, route, enc_r(texts), rows, targets, [s.image for s in samples])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip)
        opt.step()
        sched.step()
        teacher.losses[route].append(float(loss.detach()))
        step += 1
        if log and step % 200 == 0:
            parts = " ".join(f"{r} {np.mean(v[-100:]):.3f}" for r, v in teacher.losses.items() if v)
            log(f"teacher step {step} {parts} ({time.perf_counter() - t0:.0f}s)")
    teacher.steps, teacher.train_s = step, round(prior_s + time.perf_counter() - t0, 1)
    teacher.system.eval()
    return teacher


# ---- link alignment ----------------------------------------------------------------------------------
def install_decoders(system: SuperLinkSystem, teacher: Teacher) -> list[str]:
    """Copy the teacher's decoder weights into the system's decoders of the same names; returns the names."""
    names = []
    for name, d in teacher.system.decoders.items():
        if name not in system.decoders:
            raise ValueError(f"the system has no decoder {name!r} to take the teacher's weights "
                             f"(it has {sorted(system.decoders)})")
        system.decoders[name].load_state_dict(d.state_dict())
        names.append(name)
    return names


@dataclass
class AlignResult:
    steps: int
    train_s: float
    mse: dict[str, list[float]]  # route -> MSE per step of that route
    cosine: dict[str, float]  # route -> mean cosine of aligned and target vectors over its last 100 steps


def link_texts(samples: Sequence[Any], route: str, index: torch.Tensor) -> list[str]:
    """The conditioning texts aligned with a route's link-state groups (index rows are row-major)."""
    rows, targets = route_targets(samples, route, index)
    return [conditioning_text(route, samples[r], t.phrase) for r, t in zip(rows, targets, strict=True)]


def align_links(pipe: Any, teacher: Teacher, steps: int, lr: float = 1e-3, seed: int = 0,
                train_llm: bool = False, llm_lr: float = 1e-4, lm_weight: float = 1.0, replay_weight: float = 1.0,
                warmup: int = 50, log: Callable[[str], None] | None = None) -> AlignResult:
    """Install the teacher's decoders in `pipe.system` and fit the routes' projectors so that
    project(link states) matches the frozen teacher encoder's vectors of the same phrase (MSE over queries).

    train_llm: the LLM and the super-link queries learn too (at llm_lr), with the LM loss (lm_weight) kept in
    the objective so that the answers do not drift; otherwise the MLLM stays frozen and only projectors move.
    replay_weight (train_llm only): each step also adds the LM loss of one batch of the model's whole training
    mix (`training.train.batch_samples`: every task, its wording and task weights), so the tasks the alignment
    does not see are not forgotten (without it, 3 600 alignment steps at 1e-4 left routing 0.98 -> 0.49 and VQA
    0.40 -> 0.02). The replay batches follow the model's training seed and the step, not `seed`.
    """
    install_decoders(pipe.system, teacher)

    def fit(route: str, samples: list[Any], links: Any) -> tuple[torch.Tensor, torch.Tensor]:
        mapped = pipe.system.project(route, links.states)  # (N, Q, C)
        return mapped, teacher.targets(route, link_texts(samples, route, links.index)).to(mapped)

    return _fit_links(pipe, teacher.routes, [pipe.system.projectors[r] for r in teacher.routes], fit, steps, lr, seed,
                      train_llm, llm_lr, lm_weight, replay_weight, warmup, log, "align")


def align_image_links(pipe: Any, routes: Sequence[str] = IMAGE_ROUTES, steps: int = 600, lr: float = 1e-3,
                      seed: int = 0, train_llm: bool = False, llm_lr: float = 1e-4, lm_weight: float = 1.0,
                      replay_weight: float = 1.0, warmup: int = 50,
                      log: Callable[[str], None] | None = None) -> AlignResult:
    """VisionLLM v2's alignment of the generation links: fit the [GEN] / [EDIT] routes' projectors and their
    decoders' mappers so that mapper(project(link states)) matches the frozen text encoder's embedding of the
    target's description (`router.bindings.target_texts`), the condition a text-conditioned UNet
    (`decoder_conditioning: text`) learns to draw from. MSE, teacher-forced on the routes' tasks; the UNets are
    not touched. train_llm, replay_weight: as `align_links` (a moving LLM moves every other route's link states
    too, so the default keeps it frozen). bench/image_links.py measures the result."""
    system = pipe.system
    bad = [r for r in routes if r not in IMAGE_ROUTES or r not in system.projectors]
    if bad or not routes:
        raise ValueError(f"routes {list(bad or routes)} are not deployed image routes; accepted: "
                         f"{', '.join(r for r in IMAGE_ROUTES if r in system.projectors)}")
    decoders = {r: system.decoder_for(r) for r in routes}

    def fit(route: str, samples: list[Any], links: Any) -> tuple[torch.Tensor, torch.Tensor]:
        mapped = decoders[route].mapper(system.project(route, links.states))  # (N, T, D)
        _, targets = route_targets(samples, route, links.index)
        with torch.no_grad():
            text = decoders[route].text_encoder(target_texts(targets))
        return mapped, text.to(mapped)

    heads = [m for r in routes for m in (system.projectors[r], decoders[r].mapper)]
    return _fit_links(pipe, tuple(routes), heads, fit, steps, lr, seed, train_llm, llm_lr, lm_weight, replay_weight,
                      warmup, log, "align images")


def _fit_links(pipe: Any, routes: Sequence[str], heads: Sequence[nn.Module],
               fit: Callable[[str, list[Any], Any], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
               seed: int, train_llm: bool, llm_lr: float, lm_weight: float, replay_weight: float, warmup: int,
               log: Callable[[str], None] | None, tag: str) -> AlignResult:
    """The alignment loop: the routes take turns; `fit(route, samples, links)` gives (what the heads make of the
    link states, the frozen target); the heads (and with train_llm the LLM) learn the MSE between them."""
    system, cfg = pipe.system, pipe.config
    model = system.model
    system.eval().requires_grad_(False)
    for m in heads:
        m.train().requires_grad_(True)
    groups = [{"params": [p for m in heads for p in m.parameters()], "lr": lr}]
    if train_llm:
        model.train()
        for name, p in model.named_parameters():  # the image side stays as it is
            p.requires_grad_(".vision_tower." not in name and not is_connector(f"model.{name}"))
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": llm_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.training.weight_decay)
    sched = build_scheduler(opt, StageConfig(name="align", steps=1, warmup_steps=warmup, lr={}))
    params = [p for g in groups for p in g["params"]]
    mse: dict[str, list[float]] = {r: [] for r in routes}
    cos: dict[str, list[float]] = {r: [] for r in routes}
    t0 = time.perf_counter()
    for step in range(steps):
        route = routes[step % len(routes)]
        samples = task_samples(cfg, DECODER_TASKS[route], 10_000 + step // len(routes), seed)
        with torch.set_grad_enabled(train_llm):
            out = model(**model_inputs(collate(pipe.processor, samples).inputs))
        mapped, target = fit(route, samples, out.link_states[route])
        loss = F.mse_loss(mapped, target)
        total = loss + lm_weight * out.loss if train_llm else loss
        if train_llm and replay_weight > 0:
            replay = batch_samples(cfg, REPLAY_OFFSET + step, 0, 0)
            total = total + replay_weight * model(**model_inputs(collate(pipe.processor, replay).inputs)).loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.training.max_grad_norm or 1.0)
        opt.step()
        sched.step()
        mse[route].append(float(loss.detach()))
        with torch.no_grad():
            cos[route].append(float(F.cosine_similarity(mapped.mean(1), target.mean(1), dim=-1).mean()))
        if log and (step + 1) % 100 == 0:
            parts = " ".join(f"{r} mse {np.mean(mse[r][-50:]):.4f} cos {np.mean(cos[r][-50:]):.3f}"
                             for r in routes if mse[r])
            log(f"{tag} step {step + 1} {parts} ({time.perf_counter() - t0:.0f}s)")
    system.eval()
    return AlignResult(steps, round(time.perf_counter() - t0, 1), mse,
                       {r: round(float(np.mean(v[-100:])), 4) for r, v in cos.items() if v})


def install_heads(system: SuperLinkSystem, reference: SuperLinkSystem, routes: Sequence[str]) -> list[str]:
    """Copy the reference's decoders and the routes' projectors into `system`; returns the decoder names."""
    names = sorted({reference.binding(r).decoder for r in routes})
    for name in names:
        if name not in system.decoders:
            raise ValueError(f"the system has no decoder {name!r} to take the reference's weights "
                             f"(it has {sorted(system.decoders)})")
        system.decoders[name].load_state_dict(reference.decoders[name].state_dict())
    for r in routes:
        system.projectors[r].load_state_dict(reference.projectors[r].state_dict())
    return names


def anchor_links(pipe: Any, reference: Any, routes: Sequence[str], steps: int, llm_lr: float = 1e-4,
                 lm_weight: float = 1.0, replay_weight: float = 1.0, wording: str | None = None, seed: int = 0,
                 warmup: int = 50, log: Callable[[str], None] | None = None) -> AlignResult:
    """Train `pipe`'s LLM so that its links give, for any wording of a request, the link vectors the reference
    model gives for the request's template wording; the decoders and the routes' projectors are the
    reference's (copied in, then frozen), so they read what they were trained on.

    Use: a model whose LLM was trained on (LM loss only) after the decoders were fitted to its links, e.g. to
    widen its language, has link states the decoders never saw. Rather than fit the decoders again (which needs
    teachers, or costs the decoders' accuracy), pull the LLM's link states back to those of the model the
    decoders were fitted on. Teacher-forced on each route's task, the batch's scenes, targets and answers are
    the same in both wordings (`training.specialists.task_samples`), so each link group has its target.

    Objective per step: MSE(project(link states | the batch in `wording`), the reference's projected link
    states | the batch in template wording) + lm_weight x the LM loss on the same batch + replay_weight x the LM
    loss of one batch of the model's whole training mix (as `align_links`). `wording` defaults to the model's
    training wording (one of `TRAINING_WORDINGS`; never "heldout"). The image side (vision tower, connector)
    stays as it is.
    """
    system, cfg = pipe.system, pipe.config
    ref_system = reference.system
    model, ref_model = system.model, ref_system.model
    bad = [r for r in routes if r not in system.projectors or r not in ref_system.projectors]
    if bad or not routes:
        raise ValueError(f"routes {list(bad or routes)} are not deployed in both models; accepted: "
                         f"{', '.join(r for r in system.projectors if r in ref_system.projectors)}")
    wording = wording or cfg.training.wording
    if wording not in TRAINING_WORDINGS:
        raise ValueError(f"anchoring wording {wording!r} is not a training wording (held-out wordings are for "
                         f"evaluation only); accepted: {', '.join(TRAINING_WORDINGS)}")
    install_heads(system, ref_system, routes)
    system.eval().requires_grad_(False)
    ref_system.eval().requires_grad_(False)
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(".vision_tower." not in name and not is_connector(f"model.{name}"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": llm_lr}], weight_decay=cfg.training.weight_decay)
    sched = build_scheduler(opt, StageConfig(name="anchor", steps=1, warmup_steps=warmup, lr={}))
    mse: dict[str, list[float]] = {r: [] for r in routes}
    cos: dict[str, list[float]] = {r: [] for r in routes}
    t0 = time.perf_counter()
    for step in range(steps):
        route = routes[step % len(routes)]
        batch = 20_000 + step // len(routes)
        reference_samples = task_samples(cfg, DECODER_TASKS[route], batch, seed, wording="template")
        samples = task_samples(cfg, DECODER_TASKS[route], batch, seed, wording=wording)
        with torch.no_grad():
            ref_links = ref_model(**model_inputs(collate(reference.processor, reference_samples).inputs)).link_states[route]
            target = ref_system.project(route, ref_links.states)
        out = model(**model_inputs(collate(pipe.processor, samples).inputs))
        links = out.link_states[route]
        rows, ref_rows = links.index[:, 0], ref_links.index[:, 0]  # positions differ with the wording; rows not
        if rows.shape != ref_rows.shape or not torch.equal(rows, ref_rows):
            raise RuntimeError(f"step {step}: the {route} link groups differ between the two wordings "
                               f"(rows {rows.tolist()} vs {ref_rows.tolist()}); the answers must be the same")
        mapped = system.project(route, links.states)
        loss = F.mse_loss(mapped, target)
        total = loss + lm_weight * out.loss
        if replay_weight > 0:
            replay = batch_samples(cfg, REPLAY_OFFSET + step, 0, 0)
            total = total + replay_weight * model(**model_inputs(collate(pipe.processor, replay).inputs)).loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.training.max_grad_norm or 1.0)
        opt.step()
        sched.step()
        mse[route].append(float(loss.detach()))
        with torch.no_grad():
            cos[route].append(float(F.cosine_similarity(mapped.mean(1), target.mean(1), dim=-1).mean()))
        if log and (step + 1) % 100 == 0:
            parts = " ".join(f"{r} mse {np.mean(mse[r][-50:]):.4f} cos {np.mean(cos[r][-50:]):.3f}"
                             for r in routes if mse[r])
            log(f"anchor step {step + 1} {parts} ({time.perf_counter() - t0:.0f}s)")
    system.eval()
    return AlignResult(steps, round(time.perf_counter() - t0, 1), mse,
                       {r: round(float(np.mean(v[-100:])), 4) for r, v in cos.items() if v})
