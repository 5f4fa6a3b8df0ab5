"""training.parallel fsdp: FSDP2 on the LLM, replicated heads, checkpoints in the unsharded format.

The default tests shard over a one-rank gloo group inside the test process (every FSDP hook, gather and
checkpoint conversion runs; the collectives are trivial). The slow test runs two gloo processes under
torchrun against a DDP run on the same data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from router.config import CONFIG_DIR
from training.train import CHECKPOINTS, LOG, train


def _config(tmp_path: Path, name: str, **training) -> Path:
    """configs/tiny.yaml with a frozen-LLM step, then LoRA (the sharding starts with the LoRA stage)."""
    data = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    data["training"] = {
        "batch_size": 1,
        "seed": 7,
        "task_weights": {"vqa": 1.0, "generation": 1.0, "grounding": 1.0},
        "stages": [
            {"name": "heads", "steps": 1, "train_llm": "frozen"},
            {"name": "lora", "steps": 2, "train_llm": "lora"},
        ],
        **training,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _checkpoint(out: Path, step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    folder = out / CHECKPOINTS / f"step-{step:08d}"
    meta = json.loads((folder / "trainer.json").read_text())
    return load_file(str(folder / "weights.safetensors")), load_file(str(folder / "optimizer.safetensors")), meta


def _losses(out: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    return [{k: v for k, v in r.items() if isinstance(v, float) and not k.startswith("link/")} for r in rows]


def _assert_same_run(a: Path, b: Path, step: int, model_atol: float, heads_atol: float) -> None:
    """Same losses, same checkpoint keys and param groups, close weights (Adam turns rounding noise in a
    near-zero gradient into a step of up to lr, hence the looser bound outside the LLM)."""
    la, lb = _losses(a), _losses(b)
    assert [r.keys() for r in la] == [r.keys() for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5), k
    wa, oa, ma = _checkpoint(a, step)
    wb, ob, mb = _checkpoint(b, step)
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    assert any("lora_" in k for k in wa)
    assert ma["optimizer"]["param_groups"] == mb["optimizer"]["param_groups"]
    for k in wa:
        atol = model_atol if k.startswith("model.") else heads_atol
        assert torch.allclose(wa[k], wb[k], atol=atol), f"{k} differs by {(wa[k] - wb[k]).abs().max():.3g}"


def _assert_identical(a: Path, b: Path, step: int) -> None:
    wa, oa, _ = _checkpoint(a, step)
    wb, ob, _ = _checkpoint(b, step)
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
    for k in oa:
        assert torch.equal(oa[k], ob[k]), f"optimizer {k} differs after resume"


@pytest.fixture
def one_rank_group():
    """A one-process gloo group, as `torchrun --nproc_per_node 1` would give."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_on_one_rank_matches_the_plain_run_and_resumes_exactly(tmp_path, one_rank_group):
    from router.system import load_system

    sharded = _config(tmp_path, "fsdp", parallel="fsdp")
    full = train(sharded, tmp_path / "fsdp")
    assert full["sharded"] is True and full["steps"] == 3
    part = train(sharded, tmp_path / "part", max_steps=2)  # stops inside the sharded LoRA stage
    assert part["sharded"] is True and part["steps"] == 2
    resumed = train(sharded, tmp_path / "part", resume=True)
    assert resumed["steps"] == 3
    _assert_identical(tmp_path / "fsdp", tmp_path / "part", 3)
    dist.destroy_process_group()  # the same config without a process group: no sharding
    try:
        plain = train(sharded, tmp_path / "plain")
    finally:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert plain["sharded"] is False
    _assert_same_run(tmp_path / "fsdp", tmp_path / "plain", 3, model_atol=1e-5, heads_atol=2.5e-3)
    _, system, _ = load_system(Path(full["model"]))  # the final folder loads in one plain process
    saved = _checkpoint(tmp_path / "fsdp", 3)[0]
    own = system.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items() if k.startswith("model."))


def test_fsdp_refuses_what_it_cannot_shard(tmp_path, one_rank_group):
    with pytest.raises(ValueError, match="eval_every must be 0"):
        train(_config(tmp_path, "eval", parallel="fsdp", eval_every=1), tmp_path / "eval")
    full_then_lora = _config(tmp_path, "order", parallel="fsdp", stages=[
        {"name": "full", "steps": 1, "train_llm": "full"},
        {"name": "lora", "steps": 1, "train_llm": "lora"},
    ])  # fmt: skip
    with pytest.raises(ValueError, match="put the lora stages before the full ones"):
        train(full_then_lora, tmp_path / "order")


@pytest.mark.slow
def test_two_process_gloo_fsdp_matches_ddp_and_resumes_exactly(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def torchrun(cfg: Path, out: Path, *args: str) -> dict:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.train", str(cfg), str(out), *args]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    sharded = _config(tmp_path, "fsdp", parallel="fsdp")
    fsdp = torchrun(sharded, tmp_path / "fsdp")
    assert fsdp["sharded"] is True and fsdp["ranks_in_sync"] is True and fsdp["steps"] == 3
    ddp = torchrun(_config(tmp_path, "ddp", parallel="ddp"), tmp_path / "ddp")
    assert ddp["sharded"] is False
    # Two ranks, different samples: the reduce-scatter averages what DDP's all-reduce averages.
    _assert_same_run(tmp_path / "fsdp", tmp_path / "ddp", 3, model_atol=1e-5, heads_atol=2.5e-3)
    assert torchrun(sharded, tmp_path / "part", "--max-steps", "2")["steps"] == 2
    assert torchrun(sharded, tmp_path / "part", "--resume")["steps"] == 3
    _assert_identical(tmp_path / "fsdp", tmp_path / "part", 3)
