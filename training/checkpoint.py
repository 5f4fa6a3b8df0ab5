"""Training checkpoints: safetensors + JSON, no pickle, written atomically.

Layout of one checkpoint folder `OUT/checkpoints/step-000008/`:
    weights.safetensors     every parameter and buffer of the trained system
    optimizer.safetensors   optimizer state tensors, keyed "state.<param index>.<name>"
    rng.safetensors         torch CPU RNG state and numpy's MT19937 key
    trainer.json            step, stage, optimizer param_groups and scalars, scheduler state,
                            numpy/python RNG scalars, the config that produced it

A checkpoint is written into a temporary sibling folder and renamed into place
(os.replace), then `OUT/checkpoints/latest` (a one-line text file, itself replaced
atomically) is pointed at it. A crash leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from training.parallel import load_full_state

LATEST = "latest"


@dataclass
class FullState:
    """A sharded run's state gathered on rank 0, in the unsharded format (training.parallel.full_state)."""

    weights: dict[str, torch.Tensor]  # tied tensors stored once, as safetensors.torch.save_model stores them
    aliases: dict[str, str]  # dropped tied name -> kept name (save_model's metadata)
    optimizer: dict[str, Any]  # an optimizer state_dict(): states keyed by parameter index


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- optimizer ---------------------------------------------------------------------------------
def optimizer_to_flat(opt: torch.optim.Optimizer | dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state (or its state_dict()) -> (tensors, JSON scalars); tensors keyed 'state.<param index>.<name>'."""
    sd = opt if isinstance(opt, dict) else opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"state.{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def flat_to_state_dict(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of optimizer_to_flat: an optimizer state_dict() (states keyed by parameter index)."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    opt.load_state_dict(flat_to_state_dict(tensors, meta))


# ---- RNG ---------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind, key, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(key.astype(np.int64))}
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [py_version, list(py_state), py_gauss]}
    return tensors, scalars


def set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    kind, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, tensors["numpy_key"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = scalars["python"]
    random.setstate((version, tuple(state), gauss))


# ---- whole checkpoints ---------------------------------------------------------------------------
def save_checkpoint(
    root: Path,
    step: int,
    system: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
    keep: int = 2,
    full: FullState | None = None,
) -> Path:
    """Write checkpoint `step` under root/ atomically and point root/latest at it; keep the newest `keep`.

    full: the system's and optimizer's state already gathered from a sharded run (training.parallel), written
    in place of `system`'s and `optimizer`'s own, in the same format.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:08d}."))
    if full is None:
        save_model(system, str(tmp / "weights.safetensors"))
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    else:
        save_file(full.weights, str(tmp / "weights.safetensors"), metadata=full.aliases or None)
        opt_tensors, opt_meta = optimizer_to_flat(full.optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng_tensors, rng_scalars = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    meta = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_scalars, **extra}
    (tmp / "trainer.json").write_text(json.dumps(meta))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_text(root / LATEST, final.name)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    marker = root / LATEST
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"{marker} points at {path}, which is not a complete checkpoint")
    return path


def load_checkpoint(
    path: Path,
    system: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sharded: bool = False,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns trainer.json.

    sharded: `system` holds FSDP-sharded parameters (training.parallel fsdp); every rank reads the full
    checkpoint and keeps its shards (a collective: call it on every rank).
    """
    meta = json.loads((path / "trainer.json").read_text())
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    if sharded:
        weights = load_file(str(path / "weights.safetensors"))
        load_full_state(system, optimizer, weights, flat_to_state_dict(opt_tensors, meta["optimizer"]))
    else:
        load_model(system, str(path / "weights.safetensors"), strict=True)
        optimizer_from_flat(optimizer, opt_tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(load_file(str(path / "rng.safetensors")), meta["rng"])
    return meta
