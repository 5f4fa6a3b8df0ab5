"""A pipeline built from pretrained folders saves to a folder that loads without them."""

from __future__ import annotations

import shutil

import torch

from decoders.detection import DetectionDecoder
from decoders.diffusion import GenerationDecoder
from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Request


def test_saved_pipeline_no_longer_needs_its_pretrained_folders(tiny_config, tmp_path, scene_png):
    torch.manual_seed(0)
    src = tmp_path / "src"
    DetectionDecoder(tiny_config.decoders.detector).save_pretrained(src / "gd")
    GenerationDecoder(tiny_config.decoders.generator).save_pretrained(src / "sd")
    cfg = tiny_config.model_copy(deep=True)
    cfg.decoders.detector.pretrained = str(src / "gd")
    cfg.decoders.generator.pretrained = str(src / "sd")
    torch.manual_seed(1)
    pipe = Pipeline.from_config(cfg, device="cpu")
    pipe.save_pretrained(tmp_path / "saved")
    shutil.rmtree(src)  # the original folders are gone
    for f in (tmp_path / "saved").rglob("*"):
        if f.suffix in (".json", ".yaml"):  # diffusers' provenance note `_name_or_path` is not a load path
            text = "\n".join(line for line in f.read_text().splitlines() if "_name_or_path" not in line)
            assert str(src) not in text, f
    again = Pipeline.from_pretrained(tmp_path / "saved", device="cpu")
    assert (tmp_path / "saved" / "decoders" / "detector" / "config.json").is_file()
    for (name, a), b in zip(pipe.system.state_dict().items(), again.system.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    answer = ["the stars [DET] and the squares [POSE]."]
    results = []
    for p in (pipe, again):
        p.logits_hook = forced_answer_hook(p.processor.tokenizer, answer)
        results.append(p(Request(images=[scene_png], instruction="x", options={"score_threshold": 0.0})))
    assert results[0].errors == [] and results[0].detections and results[0].keypoints
    assert [d.box for d in results[0].detections] == [d.box for d in results[1].detections]
    assert [k.keypoints for k in results[0].keypoints] == [k.keypoints for k in results[1].keypoints]
