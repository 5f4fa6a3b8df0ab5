"""`superlink train` on a COCO folder written by `superlink world export` plus a LLaVA JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from router.config import CONFIG_DIR
from services.cli import app


def _llava_jsonl(export: Path) -> Path:
    """Conversations about the exported images (caption and VQA turns)."""
    images = sorted(p.name for p in (export / "images").glob("*.png") if "target" not in p.name)[:3]
    lines = [json.dumps({"id": k, "image": name, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "Some shapes."},
        {"from": "human", "value": "Is there a shape?"}, {"from": "gpt", "value": "yes"}]})
        for k, name in enumerate(images)]
    path = export / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, data: list[dict]) -> Path:
    raw = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    raw["training"] = {"batch_size": 4, "seed": 3, "data": data,
                       "stages": [{"name": "mixed", "steps": 2, "train_llm": "frozen"}]}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_superlink_train_mixes_a_coco_export_and_llava_jsonl(tmp_path):
    runner = CliRunner()
    export = tmp_path / "export"
    done = runner.invoke(app, ["world", "export", "--out", str(export), "--split", "train", "--n", "6"])
    assert done.exit_code == 0, done.output
    assert (export / "instances.json").is_file()
    config = _config(tmp_path, [
        {"kind": "coco", "weight": 2.0, "annotations": str(export / "instances.json"), "images": str(export / "images"),
         "tasks": ["detection"]},
        {"kind": "llava", "weight": 1.0, "conversations": str(_llava_jsonl(export)), "images": str(export / "images")},
        {"kind": "shapesworld", "weight": 1.0, "task_weights": {"grounding": 1.0}},
    ])
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 2
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(logs) == 2
    keys = {k for r in logs for k in r}
    assert {"lm/detection", "DET"} <= keys  # COCO rows: LM loss and the detector's loss through [DET]
    assert keys & {"lm/caption", "lm/vqa"}  # LLaVA rows
    assert {"lm/grounding", "GRD"} <= keys  # ShapesWorld rows
    shares = {n: sum(r[f"data/{n}"] for r in logs) for n in ("coco", "llava", "shapesworld")}
    assert all(v > 0 for v in shares.values()) and abs(sum(shares.values()) - len(logs)) < 1e-6
    tokenizer = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert (out / "model" / "mllm" / "tokenizer.json").read_text() == (out / "tokenizer" / "tokenizer.json").read_text()
    assert tokenizer["model"]["vocab"]


def test_superlink_train_reports_a_missing_source_file(tmp_path):
    config = _config(tmp_path, [{"kind": "llava", "conversations": str(tmp_path / "missing.jsonl")}])
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "training.data 'llava' (llava)" in result.output and "missing.jsonl is not a file" in result.output
    assert not (tmp_path / "run" / "train_log.jsonl").exists()
