"""bench/vqa_learning.py on the tiny preset: answer types, controlled image tokens, the JSON it prints."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shapesworld.tasks import make_sample

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("vqa_learning", ROOT / "bench" / "vqa_learning.py")
vqa_learning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vqa_learning)


def test_every_vqa_answer_has_a_type():
    rng = np.random.default_rng(0)
    seen = {vqa_learning.answer_type(make_sample("vqa", rng).answer) for _ in range(400)}
    assert seen == set(vqa_learning.TYPES)
    with pytest.raises(ValueError, match="no known type"):
        vqa_learning.answer_type("maybe")


def test_schedule_names_only_known_types():
    assert vqa_learning.parse_schedule("10:color,20:color+shape") == [(10, {"color"}), (20, {"color", "shape"})]
    with pytest.raises(SystemExit, match="unknown answer types"):
        vqa_learning.parse_schedule("10:colour")


def test_objects_schedule_parses_and_caps_training_scenes():
    assert vqa_learning.parse_objects_schedule("500:1,1500:2") == [(500, 1), (1500, 2)]
    for bad in ("500:one", "500", "500:0", "500:9"):
        with pytest.raises(SystemExit, match="objects-schedule"):
            vqa_learning.parse_objects_schedule(bad)
    from router.config import load_config

    questions = vqa_learning.Questions(load_config(ROOT / "configs" / "tiny.yaml"), None)
    capped = questions.draw(1, 0, 24, max_objects=1)
    free = questions.draw(1, 0, 24)
    assert all(len(s.scene.objects) == 1 for s in capped)
    assert max(len(s.scene.objects) for s in free) > 1


def test_text_mode_writes_the_scene_out_in_place_of_the_picture():
    from router.config import load_config
    from router.system import build_system

    cfg = load_config(ROOT / "configs" / "shapes.yaml")
    questions = vqa_learning.Questions(cfg, None, text=True)
    samples = questions.draw(1, 0, 16)
    _, processor = build_system(cfg, decoders=[])
    for s in samples:
        assert s.image is None and "<image>" not in s.instruction
        objects = s.instruction.split("\n")[0].removeprefix("scene: ").split(". ")
        assert len(objects) == len(s.scene.objects)
        for line, o in zip(objects, s.scene.objects, strict=True):
            colour, kind, side, height = line.rstrip(".").split(" ")
            assert (colour, kind) == (o.color, o.kind)
            assert side == ("left" if o.center[0] < s.scene.image_size / 2 else "right")
            assert height == ("top" if o.center[1] < s.scene.image_size / 2 else "bottom")
    # every scene word is one token of the shapes tokenizer (what the mode promises the LLM)
    pieces = processor.tokenizer(" " + samples[0].instruction.split("\n")[0].removeprefix("scene: "),
                                 add_special_tokens=False)["input_ids"]
    words = samples[0].instruction.split("\n")[0].removeprefix("scene: ").replace(".", " .").split()
    assert len(pieces) == len(words)
    with pytest.raises(ValueError, match="starts with"):
        vqa_learning.as_text(make_sample("generation", np.random.default_rng(0)))


def test_runs_with_oracle_tokens_and_prints_the_result():
    cmd = [sys.executable, "bench/vqa_learning.py", "--config", "configs/tiny.yaml", "--image", "oracle",
           "--steps", "4", "--eval-every", "2", "--val", "32", "--schedule", "2:color",
           "--objects-schedule", "2:1", "--device", "auto", "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == 4 and [h["step"] for h in result["history"]] == [2, 4]
    assert 0.0 <= result["acc"] <= 1.0 and 0.0 < result["prior"] <= 1.0
    assert set(result["prior_by_type"]) <= set(vqa_learning.TYPES)
    assert result["device"] == "cpu" and result["objects_schedule"] == "2:1"
    assert set(result["acc_one_object_by_type"]) <= set(vqa_learning.TYPES)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/vqa_learning.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                            "PATH": "/usr/bin:/bin"})


def test_pretrain_dense_trains_the_probe_first_and_reports_it(tmp_path):
    import yaml

    from shapesworld.scene import DENSE_LABELS

    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["model"]["dense_probe"] = {"labels": len(DENSE_LABELS), "weight": 1.0}
    path = tmp_path / "tiny_probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = _run(["--config", str(path), "--image", "vision", "--pretrain-dense", "4", "--steps", "2",
                 "--eval-every", "2", "--val", "32", "--json"])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    probe_lines = [ln for ln in lines if ln.startswith("pretrain-dense step")]
    assert [ln.split()[2] for ln in probe_lines] == ["2", "4"]  # printed every --eval-every pre-training steps
    assert all(float(ln.split()[-1]) > 0 for ln in probe_lines)
    result = json.loads(lines[-1])
    assert result["pretrain_dense"] == 4 and result["dense_probe"] is True and result["steps"] == 2
    # the LLM alone then learns from a learned map of the fixed probe's predictions
    done = _run(["--config", str(path), "--image", "probe", "--freeze-image", "--pretrain-dense", "2", "--steps", "2",
                 "--pretrain-batch", "3", "--eval-every", "2", "--val", "32", "--json"])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["image"] == "probe" and result["freeze_image"] is True and result["steps"] == 2
    assert result["pretrain_batch"] == 3 and result["batch"] == cfg["training"].get("batch_size", 8)


def test_pretrain_dense_without_a_probe_is_refused():
    done = _run(["--config", "configs/tiny.yaml", "--pretrain-dense", "4", "--steps", "2", "--json"])
    assert done.returncode != 0
    assert "--pretrain-dense needs --image vision or probe and a config with model.dense_probe" in done.stderr
    done = _run(["--config", "configs/tiny.yaml", "--image", "probe", "--steps", "2", "--json"])
    assert done.returncode != 0 and "--image probe needs --pretrain-dense N and --freeze-image" in done.stderr


def test_max_minutes_stops_training_and_still_reports():
    done = _run(["--config", "configs/tiny.yaml", "--image", "oracle", "--steps", "1000", "--eval-every", "500",
                 "--val", "32", "--max-minutes", "0", "--json"])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == 1 and result["max_minutes"] == 0 and [h["step"] for h in result["history"]] == [1]
    assert "--max-minutes 0.0: stopped after step 1 of 1000" in done.stdout



def test_init_starts_from_a_saved_model_and_its_tokenizer():
    # the shipped model, its LLM all but fixed (lr 1e-12): it answers VQA at about its prior, a fresh LLM never exactly
    common = ["--config", "checkpoints/shapes/superlink.yaml", "--image", "vision", "--steps", "1", "--lr", "1e-12",
              "--batch", "2", "--eval-every", "1", "--val", "64", "--json"]
    shipped = _run([*common, "--init", "checkpoints/shapes"])
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    assert "--init checkpoints/shapes: " in shipped.stderr and " tensors copied, 0 start fresh" in shipped.stderr
    fresh = _run(common)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    acc = {name: json.loads(done.stdout.strip().splitlines()[-1])["acc"] for name, done in
           (("shipped", shipped), ("fresh", fresh))}
    assert acc["shipped"] > 0.2 and acc["fresh"] < 0.05, acc
    missing = _run([*common, "--init", "no/such/folder"])
    assert missing.returncode != 0 and "no mllm/tokenizer.json" in missing.stderr

@pytest.mark.slow
def test_device_kit_runs_every_run_in_cpu_mode(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "bench/vqa_device.sh", "--cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary) == {"oracle_curriculum", "oracle_flat", "oracle_words", "vision_frozen", "vision_joint", "text",
                            "text_b64", "text_b256", "oracle_b256", "vision_frozen_b256", "vision_frozen_b256_init"}
    assert all(r["steps"] == 6 and r["device"] == "cpu" for r in summary.values())
    frozen = json.loads((tmp_path / "vqa_vision_frozen.json").read_text())
    assert frozen["freeze_image"] and frozen["objects_schedule"] == "3:1" and frozen["lr"] == 3e-4
    wide = json.loads((tmp_path / "vqa_text_b64.json").read_text())
    assert wide["image"] == "text" and wide["batch"] == 64 and wide["lr"] == 1e-3
    large = json.loads((tmp_path / "vqa_vision_frozen_b256.json").read_text())
    assert large["batch"] == 256 and large["lr"] == 3e-4 and large["freeze_image"] and large["objects_schedule"] == ""
    assert large["pretrain_batch"] == 8
    shipped = json.loads((tmp_path / "vqa_vision_frozen_b256_init.json").read_text())
    assert shipped["init"] == "checkpoints/shapes" and shipped["batch"] == 256 and shipped["freeze_image"]


def test_oracle_pos_tokens_carry_the_exact_labels_and_each_patch_row_and_column():
    from router.config import load_config
    from router.system import build_system
    from shapesworld.scene import DENSE_LABELS

    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    _, processor = build_system(cfg, decoders=[])
    grid = cfg.model.vision.image_size // cfg.model.vision.patch_size
    samples = vqa_learning.Questions(cfg, None).draw(3, 0, 2)
    plain = vqa_learning.ControlledImages("oracle", processor, grid)
    placed = vqa_learning.ControlledImages("oracle_pos", processor, grid)
    plain.register(samples)
    placed.register(samples)
    assert placed.width == len(DENSE_LABELS) + 2 * grid
    for key, labels in plain.labels.items():
        row = placed.labels[key]
        assert row.shape == (grid * grid, placed.width)
        assert torch.equal(row[:, :len(DENSE_LABELS)], labels)
        where = row[:, len(DENSE_LABELS):]
        assert (where.sum(1) == 2).all()
        cell = 2 * grid + 1  # row 2, column 1 in row-major order
        assert where[cell, 2] == 1 and where[cell, grid + 1] == 1


def test_oracle_words_tokens_add_the_label_words_own_embeddings():
    from router.config import load_config
    from router.system import build_system
    from shapesworld.constants import COLORS, KINDS
    from shapesworld.scene import DENSE_LABELS

    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    system, processor = build_system(cfg, decoders=[])
    grid = cfg.model.vision.image_size // cfg.model.vision.patch_size
    images = vqa_learning.ControlledImages("oracle_words", processor, grid)
    system.model.controlled_images = torch.nn.Linear(images.width, cfg.model.text.hidden_size)
    samples = vqa_learning.Questions(cfg, None).draw(3, 0, 2)
    images.register(samples)
    pixels, _ = processor.preprocess_images([s.image for s in samples])
    labels, tokens = images.encode(system.model, pixels)
    assert len(images.word_ids) == len(KINDS) + len(COLORS)
    words = tokens - system.model.controlled_images(labels)
    # the words' part is the coverage-weighted sum of the label words' input embeddings, patch by patch
    names = [*KINDS, *COLORS]
    ids = [processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in names]
    assert all(len(i) == 1 for i in ids)
    table = system.model.embed_inputs(torch.tensor([[i[0] for i in ids]]))[0]
    cover = labels[..., [DENSE_LABELS.index(w) for w in names]]
    assert cover.sum() > 0
    assert torch.allclose(words, cover @ table, atol=1e-5)
