"""Real architectures on the CPU (slow): LLaVA-1.5-7B widths (2 + 2 layers), Grounding DINO-T, SD-1.5 and
InstructPix2Pix UNets and VAEs, random weights in the hub's folder layouts (bench/realarch.py), loaded through
configs/visionllm_v2.yaml; every route answered in one compound request; saved and reloaded self-contained.

Kept lean for CI: the folders are written once (reused across sessions) under the system temp dir; the UNets
have one layer per block (real widths) and a 256 px default size; diffusion runs one step without guidance;
the detector reads 400 px images. The load time is printed (`-s`); bench/RESULTS.md records it (target < 30 s).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from bench.realarch import EMBED_ROWS, IMAGE_ID, build_folders, realarch_config
from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Request

pytestmark = pytest.mark.slow
EVERY_ROUTE = "the stars [DET], the circles [SEG], the square [GRD], the squares [POSE], a red circle [GEN], the star blue [EDIT]."
OPTIONS = {"score_threshold": 0.0, "steps": 1, "guidance_scale": 1.0, "image_guidance_scale": 1.0, "seed": 0}


def ask(pipe: Pipeline, png: bytes, answer: str):
    pipe.logits_hook = forced_answer_hook(pipe.processor.tokenizer, [answer])
    try:
        return pipe(Request(images=[png], instruction="Detect the stars and the rest.", options=OPTIONS))
    finally:
        pipe.logits_hook = None


def check_loaded(pipe: Pipeline) -> None:
    model = pipe.system.model
    llava = model.llava
    assert llava.config.text_config.hidden_size == 4096 and llava.config.vision_config.image_size == 336
    tok = model.tokenizer  # a LlamaTokenizer folder; transformers 5 may load it through its generic backend
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert model.token_ids.image == IMAGE_ID and tok.convert_tokens_to_ids("<pad>") == IMAGE_ID + 1
    first_new = min(i for i in model.token_ids.superlink_ids(model.tokenizer, model.vocab) if i != IMAGE_ID)
    assert first_new == 32002 < EMBED_ROWS  # SuperLink's first tokens take the checkpoint's spare rows
    assert llava.get_input_embeddings().weight.dtype == torch.bfloat16  # loaded in model.dtype
    assert pipe.system.decoders["keypoints"].detector is pipe.system.decoders["detector"]
    assert pipe.system.decoders["detector"].model.config.backbone_config.depths == [2, 2, 6, 2]  # Swin-T


def test_real_architectures_load_answer_every_route_and_reload_self_contained(scene_png, tmp_path):
    root = Path(tempfile.gettempdir()) / "superlink-realarch"
    folders = build_folders(root, llm_layers=2, vision_layers=2, unet_layers_per_block=1, sample_size=32)
    t0 = time.perf_counter()
    pipe = Pipeline.from_config(realarch_config(folders, detector={"image_size": 400}), device="cpu")
    seconds = time.perf_counter() - t0
    print(f"\nreal-architecture load: {seconds:.1f} s")
    check_loaded(pipe)

    first = ask(pipe, scene_png, EVERY_ROUTE)
    assert first.errors == [], first.errors
    assert first.routes == ["DET", "SEG", "GRD", "POSE", "GEN", "EDIT"]
    assert {d.route for d in first.detections} == {"DET", "SEG", "GRD"} and first.keypoints
    assert [(g.route, g.width, g.height) for g in first.images] == [("GEN", 256, 256), ("EDIT", 96, 96)]
    det_first = ask(pipe, scene_png, "the stars [DET].").detections
    assert det_first

    pipe.save_pretrained(tmp_path / "saved")
    for f in (tmp_path / "saved").rglob("*"):
        if f.suffix in (".yaml", ".json"):  # diffusers' provenance note `_name_or_path` is not a load path
            text = "\n".join(line for line in f.read_text().splitlines() if "_name_or_path" not in line)
            assert str(root) not in text, f
    del pipe
    gc.collect()
    hidden = root.with_name("superlink-realarch-hidden")
    shutil.move(root, hidden)  # the original folders are out of reach while reloading
    try:
        again = Pipeline.from_pretrained(tmp_path / "saved", device="cpu")
        det_again = ask(again, scene_png, "the stars [DET].").detections
    finally:
        shutil.move(hidden, root)
    assert [d.box for d in det_first] == [d.box for d in det_again]
