"""Training on the tiny preset: stages, parameter groups, deterministic data, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from router.config import CONFIG_DIR
from training.train import (
    CHECKPOINTS,
    TOKENIZER,
    batch_samples,
    build_optimizer,
    export_checkpoint,
    group_of,
    set_trainable,
    stage_at,
    train,
)


def _tiny_run_config(tmp_path: Path, **training) -> Path:
    """configs/tiny.yaml with a short two-stage schedule (frozen LLM, then LoRA) on cheap tasks."""
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
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    latest = (out / CHECKPOINTS / "latest").read_text().strip()
    return load_file(str(out / CHECKPOINTS / latest / "weights.safetensors"))


def test_interrupted_and_resumed_run_ends_with_the_same_parameters(tmp_path):
    cfg = _tiny_run_config(tmp_path)
    full = train(cfg, tmp_path / "full")
    assert full["steps"] == 3 and full["model"] is not None
    part = train(cfg, tmp_path / "part", max_steps=2)  # interrupted inside the LoRA stage
    assert part["steps"] == 2 and part["model"] is None
    resumed = train(cfg, tmp_path / "part", resume=True)
    assert resumed["steps"] == 3
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "part")
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    logs = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in logs] == ["heads", "lora", "lora"]
    assert all("lm" in r and "total" in r for r in logs)
    init = load_file(str(tmp_path / "full" / CHECKPOINTS / "step-00000003" / "weights.safetensors"))
    assert init.keys() == a.keys()


def test_resume_keeps_the_tokenizer_the_run_started_with(tmp_path, monkeypatch):
    import router.sources

    cfg = _tiny_run_config(tmp_path)
    out = tmp_path / "run"
    train(cfg, out, max_steps=1)
    saved = (out / TOKENIZER / "tokenizer.json").read_text()

    def no_rebuild(*_args, **_kwargs):  # a resumed run must not train a new tokenizer from the corpus
        raise AssertionError("resume rebuilt the tokenizer instead of loading OUT/tokenizer")

    monkeypatch.setattr(router.sources, "_tokenizer", no_rebuild)
    assert train(cfg, out, resume=True)["steps"] == 3
    assert (out / "model" / "mllm" / "tokenizer.json").read_text() == saved


def test_batches_are_a_function_of_seed_and_step(tmp_path, tiny_config):
    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(
        update={"batch_size": 2, "task_weights": {"vqa": 1.0, "caption": 1.0}})})
    a, b, c = batch_samples(cfg, 5, 0, 0), batch_samples(cfg, 5, 0, 0), batch_samples(cfg, 6, 0, 0)
    assert [s.instruction for s in a] == [s.instruction for s in b]
    assert [s.instruction + s.answer for s in a] != [s.instruction + s.answer for s in c]
    assert {s.task for s in a} <= {"vqa", "caption"}
    assert stage_at(tiny_config.training.stages, 0) == 0 and stage_at(tiny_config.training.stages, 4) == 1


def test_stages_choose_what_trains(tiny_config):
    from router.system import build_system

    torch.manual_seed(0)
    system, _ = build_system(tiny_config, decoders=["generator"])
    flags = {n: p.requires_grad for n, p in system.named_parameters() if group_of(n) == "decoders"}
    frozen, lora = tiny_config.training.stages
    set_trainable(system, frozen, flags)
    named = dict(system.named_parameters())
    assert not named["model.llava.lm_head.weight"].requires_grad
    assert named["model.queries.GEN.weight"].requires_grad and named["projectors.GEN.0.weight"].requires_grad
    assert not any(p.requires_grad for n, p in named.items() if ".vae." in n)  # the decoder's own freeze holds
    groups = {g["name"] for g in build_optimizer(system, frozen, 0.0).param_groups}
    assert groups == {"queries", "projectors", "decoders", "region"}
    set_trainable(system, lora, flags)
    named = dict(system.named_parameters())
    trainable_llm = [n for n, p in named.items() if p.requires_grad and group_of(n) == "llm"]
    assert trainable_llm and all("lora_" in n or "trainable_tokens" in n for n in trainable_llm)
    assert "llm" in {g["name"] for g in build_optimizer(system, lora, 0.0).param_groups}


def test_train_vision_switch_trains_the_vision_tower(tiny_config):
    from router.config import StageConfig
    from router.system import build_system

    torch.manual_seed(0)
    system, _ = build_system(tiny_config, decoders=["generator"])
    tower = [n for n, _ in system.named_parameters() if ".vision_tower." in n]
    assert tower
    for stage, expected in [(StageConfig(name="a", steps=1, train_llm="full"), False),
                            (StageConfig(name="b", steps=1, train_llm="full", train_vision=True), True),
                            (StageConfig(name="c", steps=1, train_llm="frozen", train_vision=True), True)]:
        set_trainable(system, stage, {})
        named = dict(system.named_parameters())
        assert all(named[n].requires_grad is expected for n in tower), stage.name
        assert named["model.llava.lm_head.weight"].requires_grad is (stage.train_llm == "full")


def test_a_group_without_a_rate_and_a_frozen_connector_do_not_train(tiny_config):
    from router.config import StageConfig
    from router.system import build_system

    torch.manual_seed(0)
    system, _ = build_system(tiny_config, decoders=["generator"])
    connector = [n for n, _ in system.named_parameters() if ".multi_modal_projector." in n]
    assert connector
    decoder_stage = StageConfig(name="d", steps=1, train_llm="frozen", train_connector=False,
                                lr={"projectors": 1e-3, "decoders": 1e-3})
    set_trainable(system, decoder_stage, {})
    named = dict(system.named_parameters())
    assert not any(named[n].requires_grad for n in connector)
    assert named["projectors.GEN.0.weight"].requires_grad  # the link projectors still train
    assert not named["model.queries.GEN.weight"].requires_grad  # no rate for queries: frozen
    assert any(p.requires_grad for n, p in named.items() if n.startswith("decoders."))
    assert not any(p.requires_grad for n, p in named.items() if group_of(n) in ("llm", "queries", "region"))
    set_trainable(system, decoder_stage.model_copy(update={"train_connector": True}), {})
    assert all(dict(system.named_parameters())[n].requires_grad for n in connector)


def test_a_decoder_stage_trains_decoders_on_its_own_tasks_and_leaves_the_llm_alone(tmp_path):
    cfg = _tiny_run_config(tmp_path, task_weights={"vqa": 1.0, "caption": 1.0}, log_every=1, stages=[
        {"name": "lm", "steps": 1, "train_llm": "full", "decoder_losses": False},
        {"name": "decoders", "steps": 2, "train_llm": "frozen", "train_connector": False,
         "lr": {"projectors": 1e-3, "decoders": 1e-3}, "task_weights": {"grounding": 1.0, "generation": 1.0}},
    ])
    out = tmp_path / "run"
    train(cfg, out, max_steps=1)
    before = _final_weights(out)
    train(cfg, out, resume=True)
    after = _final_weights(out)
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in logs] == ["lm", "decoders", "decoders"]
    assert {k for k in logs[0] if k.startswith("lm/")} <= {"lm/vqa", "lm/caption"}
    for r in logs[1:]:  # the stage's own task weights: decoder tasks only
        assert {k for k in r if k.startswith("lm/")} <= {"lm/grounding", "lm/generation"}
    llm = [k for k in before if k.startswith("model.llava.")]
    assert llm and all(torch.equal(before[k], after[k]) for k in llm)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoders."))


def test_a_dense_only_stage_trains_the_image_side_alone_and_a_lossless_stage_is_refused(tmp_path):
    from router.config import load_config
    from shapesworld.scene import DENSE_LABELS

    cfg = _tiny_run_config(tmp_path, task_weights={"vqa": 1.0}, log_every=1, stages=[
        {"name": "vision", "steps": 2, "train_llm": "frozen", "train_vision": True, "decoder_losses": False,
         "lm_loss": False, "lr": {"projectors": 1e-3, "llm": 1e-3}},  # the tower trains at the llm rate
    ])
    data = yaml.safe_load(cfg.read_text())
    with pytest.raises(ValueError, match="stage 'vision' has lm_loss and decoder_losses false"):
        load_config(cfg)  # no dense probe: nothing to train on
    data["model"]["dense_probe"] = {"labels": len(DENSE_LABELS)}
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    train(cfg, out, max_steps=1)
    before = _final_weights(out)
    train(cfg, out, resume=True)
    after = _final_weights(out)
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["lm"] > 0 and r["dense"] > 0 for r in logs)
    assert all(r["total"] == pytest.approx(r["dense"]) for r in logs)  # the LM loss is logged, not trained on
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".vision_tower." in k for k in changed) and any(k.startswith("model.dense_probe.") for k in changed), changed
    assert not any(k.startswith("model.llava.model.language_model.") for k in changed)


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    cfg = _tiny_run_config(tmp_path, batch_size=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "training.train", str(cfg), str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == 3 and (tmp_path / "ddp" / "model" / "superlink.yaml").is_file()
    assert result["ranks_in_sync"] is True


def test_periodic_evaluation_scores_with_evaluation_metrics(tiny_config):
    from router.system import build_system
    from training.evaluate import evaluate

    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(update={"eval_samples": 1})})
    torch.manual_seed(0)
    system, processor = build_system(cfg)
    system.train()
    scores = evaluate(system, processor, cfg, torch.device("cpu"))
    assert set(scores) == {"grd_acc50", "vqa_acc", "routing_acc", "routing_acc_heldout_wording"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert system.training  # restored after evaluation


def test_init_warm_starts_from_a_saved_model_and_max_minutes_stops_with_a_checkpoint(tmp_path):
    cfg = _tiny_run_config(tmp_path)
    first = train(cfg, tmp_path / "first")
    saved = load_file(str(Path(first["model"]) / "heads.safetensors"))
    # A 0-minute budget stops after the first step, leaving a checkpoint to resume from.
    second = train(cfg, tmp_path / "second", init=first["model"], max_minutes=0.0)
    assert second["steps"] == 1 and second["model"] is None and second["checkpoint"]
    resumed = train(cfg, tmp_path / "second", resume=True)
    assert resumed["steps"] == 3
    # The warm start began from the saved weights: heads the first stage does not train are unchanged.
    frozen_first = train(cfg, tmp_path / "third", init=first["model"], max_steps=1)
    assert frozen_first["steps"] == 1
    now = _final_weights(tmp_path / "third")
    same = [k for k in saved if k.startswith("decoders.generator.") and torch.equal(now[k], saved[k])]
    assert same, "no decoder tensor kept its warm-start value"


def test_export_writes_a_checkpoint_as_the_model_folder_a_finished_run_leaves(tmp_path):
    cfg = _tiny_run_config(tmp_path)
    full = train(cfg, tmp_path / "full")
    exported = export_checkpoint(cfg, tmp_path / "full", tmp_path / "exported")
    assert exported["step"] == 3 and exported["stage"] == "lora"
    a = load_file(str(Path(full["model"]) / "heads.safetensors"))
    b = load_file(str(tmp_path / "exported" / "heads.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    part = train(cfg, tmp_path / "part", max_steps=1)  # mid-run: stage "heads"
    assert export_checkpoint(cfg, tmp_path / "part", tmp_path / "mid")["stage"] == "heads"
    assert (tmp_path / "mid" / "heads.safetensors").is_file() and part["model"] is None


def test_cosine_stage_warms_up_then_anneals_to_its_final_scale_and_constant_stays():
    from router.config import StageConfig
    from training.train import lr_factor

    cos = StageConfig(name="s", steps=101, warmup_steps=10, lr_schedule="cosine", final_lr_scale=0.1)
    f = [lr_factor(cos, k) for k in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up
    assert f[10] == pytest.approx(1.0) and f[100] == pytest.approx(0.1)  # full rate after it, final scale at the end
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # falls monotonically
    assert f[55] == pytest.approx(0.55)  # half-way down at the middle of the decay
    const = StageConfig(name="s", steps=101, warmup_steps=10)
    assert [lr_factor(const, k) for k in (0, 9, 50, 100, 500)] == pytest.approx([0.1, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        StageConfig(name="s", steps=10, lr_schedule="linear")


def test_subword_dropout_is_seeded_per_step_and_resume_stays_exact(tmp_path, tiny_config):
    from types import SimpleNamespace

    from router.system import build_system
    from training.train import training_processor

    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(update={"subword_dropout": 0.4})})
    _, proc = build_system(cfg)
    run = SimpleNamespace(cfg=cfg, processor=proc, train_processor=None, rank=0)
    text = "detect the red circle and segment every blue square, please"

    def ids(step: int) -> list[int]:
        return training_processor(run, step, 0).encode_row(text, 1).input_ids

    assert ids(3) == ids(3) and len({tuple(ids(s)) for s in range(6)}) > 1
    assert proc.tokenizer.decode(ids(4)) == proc.tokenizer.decode(proc.encode_row(text, 1).input_ids)
    assert training_processor(run, 0, 0) is not proc and proc.subword_dropout == 0.0
    off = SimpleNamespace(cfg=tiny_config, processor=proc, train_processor=None, rank=0)
    assert training_processor(off, 3, 0) is proc

    path = _tiny_run_config(tmp_path, subword_dropout=0.4)
    train(path, tmp_path / "full")
    train(path, tmp_path / "part", max_steps=2)
    train(path, tmp_path / "part", resume=True)
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stage_own_grad_accum_sets_its_micro_batches_per_step(tmp_path, monkeypatch):
    import training.train as tt

    drawn = []
    original = tt.draw_batch

    def recording(cfg, step, micro, rank, data=None):
        drawn.append((step, micro))
        return original(cfg, step, micro, rank, data)

    monkeypatch.setattr(tt, "draw_batch", recording)
    cfg = _tiny_run_config(tmp_path, grad_accum=2, stages=[
        {"name": "heads", "steps": 1, "train_llm": "frozen"},
        {"name": "lm", "steps": 2, "train_llm": "full", "decoder_losses": False, "grad_accum": 3},
    ])  # fmt: skip
    assert train(cfg, tmp_path / "run")["steps"] == 3
    # training.grad_accum (2) where the stage sets none, the stage's own (3) where it does
    assert drawn == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
