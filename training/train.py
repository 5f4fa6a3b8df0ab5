"""Joint end-to-end training: `superlink train CONFIG [--out DIR] [--resume]` calls `train`.

    train("configs/tiny.yaml", "runs/tiny")                 # fresh run
    train("configs/tiny.yaml", "runs/tiny", resume=True)    # continue from runs/tiny/checkpoints/latest

Stages (TrainingConfig.stages) run one after another over one global step counter:
  train_llm "frozen"  queries, projectors, decoders and the region encoder train; the LLM is frozen
  train_llm "lora"    plus LoRA adapters and SuperLink's token rows (peft, mllm.lora.apply_lora)
  train_llm "full"    plus the whole LLM (the vision tower stays frozen, as in VisionLLM v2)
  train_vision true   the vision tower trains too (for towers trained from scratch), whatever train_llm is
  decoder_losses false  LM loss only: the decoders do not run (a fast first stage for a from-scratch LLM)
  lm_loss false       the LM loss is not trained on (with decoder_losses false: only model.dense_probe's loss,
                      a stage that trains a from-scratch vision tower on ShapesWorld's dense labels alone)
  train_connector false  the image connector stays frozen; with a frozen LLM the link states are then
                      fixed while decoders and link projectors fit them (VisionLLM v2's decoder stage)
A parameter group the stage gives no rate (or rate 0) is frozen. A stage's task_weights replace
training.task_weights while it runs.
Data (TrainingConfig.data, router/sources.py): the sources a batch row is drawn from, by weight:
ShapesWorld (generated), COCO instances/keypoints, RefCOCO-style refs, LLaVA conversation JSON(L). A
fresh run builds its tokenizer from the sources' texts and saves it (OUT/tokenizer, then model/mllm/).
Each stage has its own AdamW with one parameter group per `PARAM_GROUPS` name and a
linear warm-up, then a constant rate or (lr_schedule "cosine") a half cosine down to
final_lr_scale of it at the stage's last step (`lr_factor`). The batch of step s is a pure function of (seed, s, micro-step, rank),
and torch is reseeded from (seed, s) before each step, so a resumed run replays the
same data and noise and ends with the same parameters as an uninterrupted one.

Multi-GPU: launch with `torchrun --nproc_per_node N -m training.train CONFIG --out DIR`;
when WORLD_SIZE > 1 the process group is initialised (nccl on CUDA, gloo on CPU) and each
rank draws its own samples. training.parallel picks how: "ddp" wraps the system in
DistributedDataParallel; "fsdp" shards the LLM with FSDP2 from the first stage that trains
it (training.parallel), keeps the rest replicated and averages its gradients itself.
Checkpoints have one format whatever the mode, so either mode resumes the other's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from decoders.diffusion import EditDecoder, GenerationDecoder
from mllm.lora import apply_lora, is_lora_applied
from mllm.processor import SuperLinkProcessor
from mllm.tokenizer import add_superlink_tokens
from mllm.vocab import Vocabulary
from router.bindings import SuperLinkSystem
from router.config import PARAM_GROUPS, StageConfig, SuperLinkConfig, load_config
from router.loss import TrainBatch, collate, joint_loss
from router.samples import TaskSample
from router.sources import DataMix, data_tokenizer
from router.system import HEADS_FILE, MLLM_DIR, build_system, save_system
from training import parallel
from training.checkpoint import FullState, latest_checkpoint, load_checkpoint, save_checkpoint
from training.evaluate import evaluate

CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"  # the tokenizer the run started with; --resume reuses it
FINAL = "model"
LOG = "train_log.jsonl"


# ---- parameter groups and stages ----------------------------------------------------------------
def group_of(name: str) -> str:
    """Which learning-rate group a parameter of SuperLinkSystem belongs to (by its checkpoint key)."""
    image_side = ("model.image_tokenizer.", "model.dense_probe.", "model.projector_norm.")
    if name.startswith(("projectors.", *image_side)) or ".multi_modal_projector." in name:
        return "projectors"
    if name.startswith("decoders."):
        return "decoders"
    if name.startswith(("model.queries.", "model.format_queries.")):
        return "queries"
    if name.startswith("model.region_encoder."):
        return "region"
    return "llm"


def is_connector(name: str) -> bool:
    """The image connector: what turns the vision tower's patches into the LLM's image tokens."""
    return ".multi_modal_projector." in name or name.startswith(("model.projector_norm.", "model.image_tokenizer."))


def set_trainable(system: SuperLinkSystem, stage: StageConfig, decoder_flags: dict[str, bool]) -> None:
    """requires_grad per the stage; decoders keep the flags they were built with (e.g. a frozen VAE)."""
    model = system.model
    if stage.train_llm == "lora" and not is_lora_applied(model):
        apply_lora(model, model.config.lora)  # freezes all but adapters, new token rows, queries, region, projector
    lora = is_lora_applied(model)
    for name, p in system.named_parameters():
        group = group_of(name)
        rated = stage.lr.get(group, 0.0) > 0  # a group the stage gives no rate is frozen, not just left unstepped
        if group == "decoders":
            p.requires_grad_(rated and decoder_flags.get(name, True))
        elif group != "llm":
            p.requires_grad_(rated and (stage.train_connector or not is_connector(name)))
        elif ".vision_tower." in name:
            p.requires_grad_(stage.train_vision)
        elif stage.train_llm == "frozen":
            p.requires_grad_(False)
        elif stage.train_llm == "full":
            p.requires_grad_(True)
        else:  # lora: only what peft marked trainable (adapters and SuperLink's token rows)
            p.requires_grad_(lora and _is_adapter(name))


def _is_adapter(name: str) -> bool:
    return "lora_" in name or "trainable_tokens" in name


def build_optimizer(system: nn.Module, stage: StageConfig, weight_decay: float) -> torch.optim.AdamW:
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAM_GROUPS}
    for name, p in system.named_parameters():
        if p.requires_grad:
            groups[group_of(name)].append(p)
    param_groups = [
        {"params": ps, "lr": stage.lr.get(g, 0.0), "name": g}
        for g, ps in groups.items()
        if ps and stage.lr.get(g, 0.0) > 0
    ]
    if not param_groups:
        raise ValueError(f"stage {stage.name!r}: nothing to train (no trainable parameters with lr > 0)")
    return torch.optim.AdamW(param_groups, weight_decay=weight_decay)


def lr_factor(stage: StageConfig, k: int) -> float:
    """The multiple of each group's rate at step k (0-based) of the stage: linear warm-up, then constant or
    a half cosine down to stage.final_lr_scale at the stage's last step."""
    warm = stage.warmup_steps
    if warm and k < warm:
        return (k + 1) / warm
    if stage.lr_schedule == "constant":
        return 1.0
    span = max(1, stage.steps - 1 - warm)
    t = min(1.0, max(0, k - warm) / span)
    return stage.final_lr_scale + (1.0 - stage.final_lr_scale) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(opt: torch.optim.Optimizer, stage: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(stage, k))


def stage_at(stages: list[StageConfig], step: int) -> int:
    """Index of the stage that global step `step` (0-based) belongs to."""
    end = 0
    for i, s in enumerate(stages):
        end += s.steps
        if step < end:
            return i
    return len(stages) - 1


# ---- data ---------------------------------------------------------------------------------------
def with_task_weights(cfg: SuperLinkConfig, task_weights: dict[str, float]) -> SuperLinkConfig:
    """The config with other training.task_weights (a stage's own, StageConfig.task_weights)."""
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"task_weights": dict(task_weights)})})


def batch_samples(cfg: SuperLinkConfig, step: int, micro: int, rank: int, data: DataMix | None = None) -> list[TaskSample]:
    """The samples of (step, micro-step, rank): a pure function of the seed and these numbers."""
    return draw_batch(cfg, step, micro, rank, data)[0]


def draw_batch(
    cfg: SuperLinkConfig, step: int, micro: int, rank: int, data: DataMix | None = None
) -> tuple[list[TaskSample], list[str]]:
    """batch_samples and the data source of each row; `data` is the run's opened sources (DataMix(cfg))."""
    rng = np.random.default_rng([cfg.training.seed, step, micro, rank])
    return (data or DataMix(cfg)).draw(rng, cfg.training.batch_size)


def training_processor(run: Run, step: int, micro: int) -> Any:
    """The processor a training batch is encoded with: the run's own, or with `training.subword_dropout` a copy
    whose prompt re-segmentation is seeded by (seed, step, micro, rank), so an exact resume redraws it."""
    rate = run.cfg.training.subword_dropout
    if rate == 0.0:
        return run.processor
    if run.train_processor is None:
        run.train_processor = run.processor.with_subword_dropout(rate)
    run.train_processor.reseed([run.cfg.training.seed, step, micro, run.rank])
    return run.train_processor


def seed_step(seed: int, step: int, rank: int) -> None:
    """Reseed torch so a step's randomness (diffusion noise, dropout) depends only on (seed, step, rank)."""
    torch.manual_seed((seed * 1_000_003 + step) * 64 + rank)


# ---- the loop -----------------------------------------------------------------------------------
@dataclass
class Run:
    cfg: SuperLinkConfig
    out: Path
    system: SuperLinkSystem
    processor: Any
    device: torch.device
    data: DataMix  # training.data, each source opened once for the run
    rank: int = 0
    world: int = 1
    stage: int = -1
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    engine: nn.Module | None = None  # the loss module, or its DDP wrapper
    decoder_flags: dict[str, bool] = field(default_factory=dict)
    sharded: nn.Module | None = None  # fsdp: the FSDP root (system.model) once the LLM is sharded
    replicated: list[nn.Parameter] = field(default_factory=list)  # fsdp: trainable parameters FSDP does not hold
    stage_data: DataMix | None = None  # the current stage's mix when it sets its own task_weights
    train_processor: Any = None  # training.subword_dropout > 0: the processor copy batches are encoded with

    @property
    def mix(self) -> DataMix:
        """Where this stage's batches come from."""
        return self.stage_data if self.stage_data is not None else self.data

    @property
    def fsdp(self) -> bool:
        """training.parallel fsdp in a process group (torchrun; one rank is enough)."""
        return self.cfg.training.parallel == "fsdp" and dist.is_initialized()

    def enter_stage(self, index: int) -> None:
        stage = self.cfg.training.stages[index]
        if self.sharded is not None and stage.train_llm == "lora" and not _lora_applied(self.system):
            raise ValueError(
                f"stage {stage.name!r}: training.parallel fsdp cannot add LoRA to an LLM an earlier 'full' stage "
                "already sharded; put the lora stages before the full ones, or use parallel: ddp"
            )
        set_trainable(self.system, stage, self.decoder_flags)  # applies LoRA on the first lora stage
        self.stage_data = None if stage.task_weights is None else DataMix(with_task_weights(self.cfg, stage.task_weights))
        if self.fsdp and self.sharded is None and stage.train_llm != "frozen":
            parallel.broadcast_from_rank0(self.system)  # e.g. LoRA's fresh adapters, drawn per rank
            self.sharded = parallel.shard_llm(self.system, self.cfg.training.mixed_precision)
        for decoder in self.system.decoders.values():
            if isinstance(decoder, (GenerationDecoder, EditDecoder)):
                decoder.conditioning = stage.decoder_conditioning
        self.optimizer = build_optimizer(self.system, stage, self.cfg.training.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, stage)
        engine = _LossModule(self.system, self.cfg.training.loss_weights, stage.decoder_losses, stage.lm_loss)
        if self.fsdp:
            self.replicated = parallel.replicated_trainable(self.system)
            self.engine = engine
        else:
            self.engine = _wrap_ddp(engine, self.device) if self.world > 1 else engine
        self.stage = index

    def full_state(self) -> FullState | None:
        """Collective under fsdp once sharded: the whole state on rank 0 (None elsewhere); None otherwise."""
        if self.sharded is None:
            return None
        weights, aliases = parallel.full_model_state(self.system)
        optimizer = parallel.full_optimizer_state(self.system, self.optimizer)
        return FullState(weights, aliases, optimizer) if self.rank == 0 else None


def _lora_applied(system: SuperLinkSystem) -> bool:
    return is_lora_applied(system.model)


class _LossModule(nn.Module):
    """DDP needs one module whose forward runs the whole loss."""

    def __init__(self, system: SuperLinkSystem, weights: dict[str, float], decoders: bool = True,
                 lm: bool = True) -> None:
        super().__init__()
        self.system = system
        self.weights = weights
        self.decoders = decoders
        self.lm = lm

    def forward(
        self, batch: TrainBatch, health: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        out = joint_loss(self.system, batch, self.weights, decoders=self.decoders, health=health, lm=self.lm)
        return out.total, out.parts, {**{f"lm/{k}": v for k, v in out.lm_per_task.items()}, **out.health}


def _wrap_ddp(engine: nn.Module, device: torch.device) -> nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    # Routes absent from a rank's batch leave their projector and decoder unused on that step.
    return DistributedDataParallel(engine, device_ids=ids, find_unused_parameters=True)


def _autocast(cfg: SuperLinkConfig, device: torch.device) -> contextlib.AbstractContextManager:
    mp = cfg.training.mixed_precision
    if mp == "no":
        return contextlib.nullcontext()
    if mp == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision 'fp16' needs a CUDA device; use 'bf16' or 'no' on CPU")
    if mp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16 support; set training.mixed_precision to 'fp16' or 'no'")
    return torch.autocast(device.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16)


def stage_accum(cfg: SuperLinkConfig, stage: int) -> int:
    """Micro-batches per optimizer step in stage `stage`: its own grad_accum, else training.grad_accum."""
    own = cfg.training.stages[stage].grad_accum
    return cfg.training.grad_accum if own is None else own


def micro_step(run: Run, step: int, micro: int) -> dict[str, float]:
    """Forward + backward of one micro-batch; returns its losses (and, on logged steps, link health) for logging."""
    samples, sources = draw_batch(run.cfg, step, micro, run.rank, run.mix)
    batch = collate(training_processor(run, step, micro), samples)
    batch.inputs = {k: v.to(run.device) if isinstance(v, torch.Tensor) else v for k, v in batch.inputs.items()}
    accum = stage_accum(run.cfg, run.stage)
    last = micro == accum - 1
    if run.sharded is not None:  # reduce-scatter the LLM's gradients on the last micro-step only
        run.sharded.set_requires_gradient_sync(last)
    sync = contextlib.nullcontext() if last or run.world == 1 or run.fsdp else run.engine.no_sync()
    with sync, _autocast(run.cfg, run.device):
        total, parts, extra = run.engine(batch, health=(step + 1) % run.cfg.training.log_every == 0)
        # A frozen-LLM stage's micro-batch may hold no row that reaches a trainable weight (no decoder rows):
        # nothing to learn from it. Under DDP every rank must run backward, so there it still raises.
        if total.requires_grad or run.world > 1:
            (total / accum).backward()
    logged = {k: float(v.detach()) for k, v in parts.items()}
    logged.update(extra)
    logged["total"] = float(total.detach())
    if len(run.mix.sources) > 1:  # the share of this micro-batch's rows each source supplied
        logged.update({f"data/{n}": sources.count(n) / len(sources) for n in run.mix.names})
    return logged


def optimizer_step(run: Run) -> None:
    if run.fsdp:
        parallel.sync_grads(run.replicated, run.world)
    if run.cfg.training.max_grad_norm is not None:
        with_grad = [p for p in run.system.parameters() if p.grad is not None]
        if run.fsdp:
            parallel.clip_grad_norm(with_grad, run.cfg.training.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(with_grad, run.cfg.training.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def mean_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in logs for k in d}
    return {k: float(np.mean([d[k] for d in logs if k in d])) for k in sorted(keys)}


# ---- setup --------------------------------------------------------------------------------------
def init_distributed(sharded: bool = False) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when WORLD_SIZE > 1, and also for one process
    under torchrun (MASTER_ADDR set) when `sharded`, so fsdp runs (over one rank) on a single GPU too."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    join = world > 1 or (sharded and "MASTER_ADDR" in os.environ)
    if join and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        world = dist.get_world_size()
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def run_tokenizer(cfg: SuperLinkConfig, out: Path) -> Any:
    """The tokenizer a run started with (OUT/tokenizer), so a resumed run keeps its token ids; None if
    the run saved none (then the config's tokenizer is built, as at the start) or the model is pretrained."""
    saved = out / TOKENIZER
    if cfg.model.pretrained or not (saved / "tokenizer.json").is_file():
        return None

    return SuperLinkProcessor.from_pretrained(saved, cfg.model).tokenizer


def init_tokenizer(init: Path, cfg: SuperLinkConfig) -> Any:
    """The tokenizer of a saved system folder (written by Pipeline.save_pretrained / a run's model/), with the
    tokens of any route `cfg` declares beyond the saved model's appended (every saved id is kept)."""
    if not (init / MLLM_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(f"--init {init}: no {MLLM_DIR}/tokenizer.json; expected a folder written by save_pretrained")
    tokenizer = AutoTokenizer.from_pretrained(str(init / MLLM_DIR), local_files_only=True)
    add_superlink_tokens(tokenizer, Vocabulary.from_config(cfg.model))
    return SuperLinkProcessor(tokenizer, cfg.model).tokenizer


def init_weights(system: SuperLinkSystem, init: Path) -> dict[str, int]:
    """Warm start from a saved system: copy every tensor whose name and shape match; the rest keeps its init.

    A changed part (another projector, a new query table, a resized decoder) starts fresh; everything else
    continues from the saved weights. Returns how many tensors were copied and how many start fresh.
    """
    saved = load_file(str(init / HEADS_FILE))
    if system.model is not None:
        saved |= {f"model.{k}": v for k, v in load_file(str(init / MLLM_DIR / "model.safetensors")).items()}
    own = system.state_dict()
    take = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    take |= _grown_token_rows(system, own, saved)
    system.load_state_dict(take, strict=False)
    fresh = [k for k in own if k not in take and not _tied_to_copied(k, own, take)]
    return {"copied": len(take), "fresh": len(fresh)}


def _grown_token_rows(system: SuperLinkSystem, own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> dict:
    """Token matrices the config grew (a route added to the saved model): the saved rows, then the new tokens'
    rows at the mean of the saved ones (mllm.embeddings' rule; no covariance sampling)."""
    if system.model is None:
        return {}
    llava = system.model.llava
    ptrs = {m.weight.data_ptr() for m in (llava.get_input_embeddings(), llava.get_output_embeddings()) if m is not None}
    out = {}
    for k, v in saved.items():
        mine = own.get(k)
        if mine is None or mine.data_ptr() not in ptrs or mine.shape[1:] != v.shape[1:] or len(v) >= len(mine):
            continue
        rows = v.float().mean(0, keepdim=True).expand(len(mine) - len(v), -1).to(v.dtype)  # (new, D)
        out[k] = torch.cat([v, rows])
    return out


def _tied_to_copied(key: str, own: dict[str, torch.Tensor], take: dict[str, torch.Tensor]) -> bool:
    """A tied weight (e.g. lm_head with tied embeddings) is stored once; its twin counts as copied."""
    return any(own[k].data_ptr() == own[key].data_ptr() for k in take)


def build_run(cfg: SuperLinkConfig, out: Path, resume: bool = False, init: Path | None = None) -> Run:
    data = DataMix(cfg)  # opens every source: a bad path fails here, before the model is built
    rank, world, device = init_distributed(sharded=cfg.training.parallel == "fsdp")
    check_parallel(cfg)
    torch.manual_seed(cfg.training.seed)  # the same initial weights on every rank and every (re)start
    if resume:
        tokenizer = run_tokenizer(cfg, out)
    else:
        tokenizer = init_tokenizer(init, cfg) if init is not None else None
    if tokenizer is None and not cfg.model.pretrained:  # a fresh tokenizer from the configured sources' texts
        tokenizer = data_tokenizer(cfg)
    system, processor = build_system(cfg, tokenizer=tokenizer)
    if init is not None and not resume:
        copied = init_weights(system, init)
        print(f"--init {init}: {copied['copied']} tensors copied, {copied['fresh']} start fresh", file=sys.stderr)
    if not resume and rank == 0 and system.model is not None and not cfg.model.pretrained:
        system.model.tokenizer.save_pretrained(str(out / TOKENIZER))
    system.to(device).train()
    flags = {n: p.requires_grad for n, p in system.named_parameters() if group_of(n) == "decoders"}
    return Run(cfg, out, system, processor, device, data, rank, world, decoder_flags=flags)


def restore(run: Run) -> int:
    """Load the latest checkpoint under OUT/checkpoints; returns the step to continue from."""
    path = latest_checkpoint(run.out / CHECKPOINTS)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run.out / CHECKPOINTS}")
    meta = json.loads((path / "trainer.json").read_text())
    for k in range(meta["stage"] + 1):  # replay stage entries so LoRA is applied if it was
        run.enter_stage(k)
    load_checkpoint(path, run.system, run.optimizer, run.scheduler, sharded=run.sharded is not None)
    return int(meta["step"])


def save(run: Run, step: int) -> Path | None:
    full = run.full_state()  # collective under fsdp: every rank calls save
    if run.rank != 0:
        return None
    extra = {"stage": run.stage, "config": run.cfg.model_dump(mode="json")}
    return save_checkpoint(run.out / CHECKPOINTS, step, run.system, run.optimizer, run.scheduler, extra, full=full)


def save_final(run: Run, out: Path) -> None:
    """The trained system folder (router.system.save_system), from rank 0; gathered first under fsdp."""
    weights = None
    if run.sharded is not None:
        state, aliases = parallel.full_model_state(run.system)  # collective
        strip = len("model.")
        weights = (
            {k[strip:]: v for k, v in state.items() if k.startswith("model.")},
            {k[strip:]: v[strip:] for k, v in aliases.items() if k.startswith("model.")},
        )
    if run.rank == 0:
        save_system(run.cfg, run.system, run.processor, out, model_weights=weights)


def check_parallel(cfg: SuperLinkConfig) -> None:
    """What training.parallel fsdp cannot do yet, said before any work starts."""
    if cfg.training.parallel != "fsdp" or not dist.is_initialized():
        return
    if cfg.training.eval_every:
        raise ValueError(
            "training.parallel fsdp: eval_every must be 0 (evaluation runs on rank 0 alone, but a sharded LLM "
            "needs every rank); evaluate the saved model afterwards (superlink eval)"
        )
    if cfg.model.format_queries is not None:
        raise ValueError(
            "training.parallel fsdp: model.format_queries is not supported (its extra LLM pass runs only on "
            "ranks whose batch holds native-detection rows); use parallel: ddp"
        )


# ---- entry point --------------------------------------------------------------------------------
def train(config_path: str | Path, out_dir: str | Path, resume: bool = False, max_steps: int | None = None,
          init: str | Path | None = None, max_minutes: float | None = None) -> dict:
    """Train per the config; `max_steps` stops early (after a checkpoint), as an interrupted run would.

    init: warm-start from a saved system folder (e.g. checkpoints/shapes) with its tokenizer (`init_weights`).
    max_minutes: stop after the step that crosses this wall time, saving a checkpoint to --resume from.
    """
    cfg = load_config(config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = build_run(cfg, out, resume, Path(init) if init is not None else None)
    total_steps = sum(s.steps for s in cfg.training.stages)
    start = restore(run) if resume else 0
    if not resume and run.rank == 0:
        (out / LOG).write_text("")  # a fresh run starts a fresh log
    stop = total_steps if max_steps is None else min(total_steps, max_steps)
    history, evals, t0 = [], {}, time.perf_counter()
    deadline = None if max_minutes is None else t0 + 60 * max_minutes
    bar = tqdm(range(start, stop), initial=start, total=total_steps, disable=run.rank != 0, desc="train", file=sys.stderr)
    for step in bar:
        if stage_at(cfg.training.stages, step) != run.stage:
            run.enter_stage(stage_at(cfg.training.stages, step))
        seed_step(cfg.training.seed, step, run.rank)
        logs = mean_logs([micro_step(run, step, m) for m in range(stage_accum(cfg, run.stage))])
        optimizer_step(run)
        history.append({"step": step + 1, "stage": cfg.training.stages[run.stage].name, **logs})
        bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if "/" not in k})
        done = step + 1
        if done % cfg.training.log_every == 0 or done == stop:
            _log(run, history[-1])
        if cfg.training.eval_every and done % cfg.training.eval_every == 0 and run.rank == 0:
            evals = evaluate(run.system, run.processor, cfg, run.device)
            _log(run, {"step": done, "eval": evals})
        if cfg.training.save_every and done % cfg.training.save_every == 0:
            save(run, done)
        if deadline is not None and time.perf_counter() > deadline:
            stop = done
            break
    final_step = max(start, stop)
    checkpoint = save(run, final_step) if history or not resume else latest_checkpoint(out / CHECKPOINTS)
    if final_step == total_steps:
        save_final(run, out / FINAL)
    return {
        "ranks_in_sync": ranks_in_sync(run) if run.world > 1 else None,
        "sharded": run.sharded is not None,
        "steps": final_step,
        "total_steps": total_steps,
        "seconds": round(time.perf_counter() - t0, 2),
        "last": history[-1] if history else {},
        "eval": evals,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "model": str(out / FINAL) if final_step == total_steps else None,
    }


def export_checkpoint(config_path: str | Path, out_dir: str | Path, dest: str | Path) -> dict:
    """Write the latest checkpoint under OUT/checkpoints as a model folder (what a finished run leaves in OUT/model)."""
    cfg, out = load_config(config_path), Path(out_dir)
    run = build_run(cfg, out, resume=True)
    step = restore(run)
    save_final(run, Path(dest))
    return {"step": step, "stage": cfg.training.stages[run.stage].name, "model": str(dest)}


def ranks_in_sync(run: Run) -> bool:
    """Whether every rank ends with the same parameters (DDP, or fsdp's replicated part, averaged the gradients)."""
    if run.fsdp:
        return parallel.in_sync(run.system, run.device)
    with torch.no_grad():
        digest = torch.stack([p.double().sum() for p in run.system.parameters()]).sum().reshape(1).to(run.device)
    gathered = [torch.zeros_like(digest) for _ in range(run.world)]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _log(run: Run, record: dict) -> None:
    if run.rank == 0:
        with (run.out / LOG).open("a") as f:
            f.write(json.dumps(record) + "\n")


def main() -> None:
    """torchrun --nproc_per_node N -m training.train CONFIG [OUT | --out OUT] [--resume] [--max-steps N]"""
    ap = argparse.ArgumentParser(description="SuperLink joint training (one process per GPU under torchrun)")
    ap.add_argument("config")
    ap.add_argument("out_pos", nargs="?", default=None, metavar="OUT")
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this global step (with a checkpoint)")
    args = ap.parse_args()
    result = train(args.config, args.out or args.out_pos or "runs/train", resume=args.resume, max_steps=args.max_steps)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    if dist.is_initialized():
        # Every rank reaches teardown before any leaves: a rank that exits while rank 0 still writes the
        # final checkpoint closes its gloo connections under rank 0, whose teardown then aborts the process.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
