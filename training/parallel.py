"""Sharded data parallel training (training.parallel: fsdp): torch FSDP2 (`fully_shard`) on the LLM only.

What is sharded: each decoder layer of the language model is one FSDP unit, and the LLM root (token
embedding, final norm, LM head, with any LoRA trainable-token rows) is another, rooted at the SuperLink
model so that its forward gathers them. The LLM runs on every rank at every step, so every rank issues the
same all-gathers and reduce-scatters in the same order.

What stays replicated: the vision tower, the multimodal projector, the query tables, the region encoder, the
projectors and the decoders (`ignored_params`). A route absent from one rank's batch leaves its projector and
decoder without gradients there, so FSDP's collectives, which must match on every rank, cannot cover them;
`sync_grads` all-reduces their gradients once per optimizer step instead (a parameter no rank used keeps
grad None, as DDP leaves it).

Checkpoints stay in the unsharded format: `full_state` gathers every tensor to rank 0
(torch.distributed.checkpoint.state_dict, full_state_dict) and `load_full_state` scatters a full checkpoint
back into the shards, so a sharded run resumes from, and writes, the same files as a single-process run.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

BUCKET_ELEMENTS = 1 << 25  # replicated gradients are all-reduced in buckets of at most this many elements


def shard_llm(system: nn.Module, mixed_precision: str = "no") -> FSDPModule:
    """fully_shard each LLM decoder layer, then the model (root) with everything outside the LLM ignored.

    bf16: the LLM's weights are gathered and run in bfloat16, gradients reduced in float32.
    Returns the root FSDP module (system.model).
    """
    model = system.model
    if model is None:
        raise ValueError("training.parallel fsdp needs a system with an MLLM to shard")
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    language_model = model.llava.model.language_model
    for layer in language_model.layers:
        fully_shard(layer, mp_policy=policy)
    llm = set(chain(language_model.parameters(), model.llava.lm_head.parameters()))
    ignored = {p for p in model.parameters() if p not in llm}
    return fully_shard(model, mp_policy=policy, ignored_params=ignored)


def broadcast_from_rank0(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps a module)."""
    with torch.no_grad():
        for t in chain(module.parameters(), module.buffers()):
            dist.broadcast(t.data, 0)


def is_sharded(p: torch.Tensor) -> bool:
    return isinstance(p, DTensor)


def replicated_trainable(system: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters FSDP does not manage; their gradients are `sync_grads`' job."""
    return [p for p in system.parameters() if p.requires_grad and not is_sharded(p)]


def sync_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of replicated parameters over the ranks (bucketed all-reduce).

    A parameter unused on one rank counts as a zero gradient there; one unused on every rank keeps grad None,
    so the optimizer skips it, as it would under DDP.
    """
    if not params:
        return
    device = params[0].device
    used = torch.tensor([float(p.grad is not None) for p in params], device=device)
    dist.all_reduce(used)
    live = [p for p, u in zip(params, used.tolist(), strict=True) if u > 0]
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = defaultdict(list)
    for p in live:
        by_dtype[p.dtype].append(p)
    for group in by_dtype.values():
        for bucket in _buckets(group):
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            flat /= world
            for p, g in zip(bucket, flat.split([p.numel() for p in bucket]), strict=True):
                p.grad = g.view_as(p).clone()


def _buckets(params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    out: list[list[nn.Parameter]] = [[]]
    size = 0
    for p in params:
        if out[-1] and size + p.numel() > BUCKET_ELEMENTS:
            out.append([])
            size = 0
        out[-1].append(p)
        size += p.numel()
    return out


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2) over a mix of sharded (DTensor) and replicated gradients.

    The replicated gradients are already averaged (identical on every rank); the shards' squared norms are
    summed over the ranks, so every rank computes the same total norm and the same scale.
    """
    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() for g in grads if is_sharded(g)]
    plain = [g for g in grads if not is_sharded(g)]
    device = params[0].device if params else torch.device("cpu")
    shard_sq = sum((g.float().pow(2).sum() for g in local), torch.zeros((), device=device))
    dist.all_reduce(shard_sq)
    plain_sq = sum((g.float().pow(2).sum() for g in plain), torch.zeros((), device=device))
    total = (shard_sq + plain_sq).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in [*local, *plain]:
        g.mul_(scale.to(g.dtype))
    return total


def in_sync(system: nn.Module, device: torch.device) -> bool:
    """Whether every rank holds the same replicated parameters (sharded ones are one copy by construction)."""
    with torch.no_grad():
        parts = [p.double().sum() for p in system.parameters() if not is_sharded(p)]
        digest = torch.stack(parts).sum().reshape(1).to(device)
    gathered = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


# ---- checkpoints: full (unsharded) state on rank 0 -----------------------------------------------
def _tied_names(system: nn.Module) -> dict[str, str]:
    """Duplicate name -> the name a tied tensor is stored under (the first in sorted order, as
    safetensors.torch.save_model keeps it), so a gathered state is stored exactly as save_model stores it."""
    names: dict[int, list[str]] = defaultdict(list)
    for name, t in system.state_dict(keep_vars=True).items():
        names[id(t)].append(name)
    out = {}
    for group in names.values():
        keep, *rest = sorted(group)
        out.update({r: keep for r in rest})
    return out


def full_model_state(system: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Collective: every tensor of `system`, unsharded, on rank 0 ({} on the others), tied copies stored
    once; plus safetensors' alias metadata (dropped name -> kept name)."""
    state = get_model_state_dict(system, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tied = _tied_names(system)
    kept = {k: v.contiguous() for k, v in state.items() if k not in tied}
    return kept, (dict(tied) if state else {})


def full_optimizer_state(system: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: the optimizer's state_dict() as a single process would return it (states keyed by
    parameter index, full tensors), on rank 0; {} on the others."""
    state = get_optimizer_state_dict(
        system, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not state:
        return {}
    order = [fqn for group in state["param_groups"] for fqn in group["params"]]
    index = {fqn: i for i, fqn in enumerate(order)}
    groups, start = [], 0
    for group in state["param_groups"]:
        n = len(group["params"])
        groups.append({**group, "params": list(range(start, start + n))})
        start += n
    return {"state": {index[fqn]: st for fqn, st in state["state"].items()}, "param_groups": groups}


def load_full_state(
    system: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor], opt_state: dict[str, Any]
) -> None:
    """Collective: load a full (unsharded) checkpoint, read on every rank, into the sharded system and optimizer."""
    weights = dict(weights)
    for dup, kept in _tied_names(system).items():
        weights.setdefault(dup, weights[kept])
    set_model_state_dict(system, weights, options=StateDictOptions(full_state_dict=True, strict=True))
    name_of = {id(p): n for n, p in system.named_parameters()}
    fqns = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [
        {**saved, "params": [fqns[i] for i in saved["params"]]} for saved in opt_state["param_groups"]
    ]
    state = {fqns[int(i)]: st for i, st in opt_state["state"].items()}
    # strict=False: a parameter no step has used yet (a route absent so far) has no state, as in opt.state_dict()
    set_optimizer_state_dict(
        system, optimizer, {"state": state, "param_groups": groups},
        options=StateDictOptions(full_state_dict=True, strict=False),
    )  # fmt: skip
    # set_optimizer_state_dict first gives every parameter a state (a zero-gradient step); drop the ones the
    # checkpoint had none for, so such a parameter starts fresh when first used, as in an uninterrupted run
    for group in optimizer.param_groups:
        for p in group["params"]:
            if name_of[id(p)] not in state:
                optimizer.state.pop(p, None)
