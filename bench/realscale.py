"""Benchmark: the VisionLLM v2-size system (7B-shape LLaVA-1.5, Grounding DINO-T, SD-1.5, InstructPix2Pix)
with random weights, against the hardware limit.

    python bench/realscale.py --json                 # on a GPU: the full-depth system in bf16
    python bench/realscale.py --cpu --json           # CPU mode: the tiny preset, same measurements (smoke)

Measured (medians of --repeats after a warm-up; CUDA synchronised around every timing):
  decode_ms_per_token_b1      batched routed generation (mllm.generation) at B=1, eos banned, --new-tokens long
  decode_tokens_per_s_b16/b32 the same at B=16 and B=32 (new tokens of all rows per second)
  hbm_bound_ms_per_token      LLM weight bytes read per decode step / the card's memory bandwidth (table below,
                              by torch.cuda.get_device_name); decode_ratio_to_bound = b1 ms / bound (target <= 1.3)
  speedup_vs_sequential_b16   16 rows in one batch vs the same rows one after another (16 x the B=1 time)
  prefill_ms_576              one <image> prompt (576 image tokens at 336 px) through generate with 1 new token
  detector_ms_b1, detector_images_per_s_b8   Grounding DINO-T (link-conditioned) at its 800 px input, 4 phrases
  generator_ms_b1, generator_images_per_s_b4  SD-1.5 UNet + VAE, --steps steps (default 20) at 512 px, guidance 7.5
  compound                    bench/compound.py's measure() on a [DET]+[GEN]+[EDIT] request: ratio_to_critical_path
                              (target <= 1.15) and speedup_vs_serial
The random weights are built in memory directly on the device in bf16 (transformers' no_init_weights, a tiled
random fill), so nothing is downloaded or written to disk. LoRA is left off (a served model merges it).
Results go to $OUT/realscale.json when OUT is set (the device tool returns $OUT) and, with --json, to the last
line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: import from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from router.pipeline import Pipeline, forced_answer_hook  # noqa: E402
from router.schemas import Request  # noqa: E402

# Peak HBM/GDDR bandwidth in bytes/s by a substring of torch.cuda.get_device_name (first match wins).
BANDWIDTH = [
    ("H200", 4.8e12), ("GH200", 4.0e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
    ("H800", 3.35e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12), ("A800", 2.039e12), ("L40S", 0.864e12), ("L40", 0.864e12), ("A10G", 0.6e12),
    ("A10", 0.6e12), ("L4", 0.3e12), ("RTX 4090", 1.008e12), ("V100", 0.9e12), ("T4", 0.32e12),
]  # fmt: skip


def bandwidth_of(name: str) -> float | None:
    return next((bw for key, bw in BANDWIDTH if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median wall seconds of fn() over `repeats` runs, after one warm-up run."""
    fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


# ---- building ------------------------------------------------------------------------------------
def build_realscale(device: torch.device, dtype: torch.dtype, llm_layers: int, vision_layers: int) -> Pipeline:
    """The 7B-shape system with random weights, made on `device` in `dtype` (no disk, no float32 copy)."""
    from transformers import GroundingDinoConfig, LlavaForConditionalGeneration
    from transformers.initialization import no_init_weights

    from bench.realarch import SCHEDULERS, fill_random, llama_tokenizer, llava_config, sd_unet, sd_vae
    from decoders.detection import DetectionDecoder, LinkGroundingDino
    from decoders.diffusion import EditDecoder, GenerationDecoder, config_from_components
    from decoders.keypoints import KeypointDecoder
    from mllm.embeddings import default_dtype, grow_token_embeddings
    from mllm.modeling import SuperLinkModel, config_from_llava
    from mllm.processor import SuperLinkProcessor
    from mllm.tokenizer import add_superlink_tokens
    from mllm.vocab import Vocabulary
    from router.bindings import SuperLinkSystem, default_bindings
    from router.config import load_config

    cfg = load_config("visionllm_v2")
    cfg.model.lora = None
    cfg.model.dtype = str(dtype).removeprefix("torch.")
    with torch.device(device), no_init_weights(), default_dtype(dtype):
        llava = LlavaForConditionalGeneration(llava_config(llm_layers, vision_layers))
        llava.tie_weights()
        gd = LinkGroundingDino(GroundingDinoConfig())
        gd.tie_weights()
        unets = sd_unet(4, 2), sd_unet(8, 2)
        vaes = sd_vae(), sd_vae()
    for i, m in enumerate([llava, gd, *unets, *vaes]):
        fill_random(m, seed=i)
    tokenizer = llama_tokenizer()
    known = len(tokenizer)
    add_superlink_tokens(tokenizer, Vocabulary.from_config(cfg.model))
    grow_token_embeddings(llava, len(tokenizer), known_tokens=known)
    cfg.model = config_from_llava(llava.config, cfg.model, Path("<random>"))
    cfg.model.pretrained = None
    with torch.device(device), default_dtype(dtype):
        model = SuperLinkModel(cfg.model, tokenizer, llava=llava)
        detector = DetectionDecoder(cfg.decoders.detector.model_copy(update={"pretrained": None}), model=gd)
        gen_cfg = config_from_components(cfg.decoders.generator, unets[0], vaes[0], SCHEDULERS["sd"], "<random>")
        edit_cfg = config_from_components(cfg.decoders.editor, unets[1], vaes[1], SCHEDULERS["ip2p"], "<random>")
        decoders = {
            "detector": detector,
            "keypoints": KeypointDecoder(cfg.decoders.keypoints, detector),
            "generator": GenerationDecoder(gen_cfg, unet=unets[0], vae=vaes[0], scheduler_config=SCHEDULERS["sd"]),
            "editor": EditDecoder(edit_cfg, unet=unets[1], vae=vaes[1], scheduler_config=SCHEDULERS["ip2p"]),
        }
        system = SuperLinkSystem(model, decoders, default_bindings(), llava.config.text_config.hidden_size)
    pipe = Pipeline(cfg, system, SuperLinkProcessor(tokenizer, model.config))
    return pipe.to(device, dtype)


def build_tiny(device: torch.device) -> Pipeline:
    torch.manual_seed(0)
    return Pipeline.from_pretrained("tiny", device=str(device), dtype="float32")


# ---- measurements --------------------------------------------------------------------------------
def llm_weight_bytes(pipe: Pipeline) -> int:
    """Bytes a decode step reads: the language model's layers and norm plus the output matrix."""
    llava = pipe.system.model.llava
    lm = sum(p.numel() * p.element_size() for n, p in llava.model.language_model.named_parameters() if "embed_tokens" not in n)
    head = llava.lm_head.weight
    return lm + head.numel() * head.element_size()


def text_batch(pipe: Pipeline, rows: int, images: list | None = None) -> dict:
    prompts = ["Describe the picture in detail." for _ in range(rows)]
    batch = pipe.processor(prompts, images=images or [[] for _ in range(rows)])
    device = next(pipe.system.model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def never_stop(pipe: Pipeline) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """A logits hook that bans eos and the routing tokens, so every row decodes the full length."""
    model = pipe.system.model
    banned = [model.token_ids.eos, *model.token_ids.route.values()]

    def hook(step: int, logits: torch.Tensor) -> torch.Tensor:
        logits[:, banned] = float("-inf")
        return logits

    return hook


def bench_decode(pipe: Pipeline, device: torch.device, new_tokens: int, repeats: int) -> dict[str, float]:
    from mllm.generation import generate

    model, hook, out = pipe.system.model, never_stop(pipe), {}
    for b in (1, 16, 32):
        batch = text_batch(pipe, b)

        def run(n: int, batch: dict = batch) -> None:
            generate(model, batch, max_new_tokens=n, logits_hook=hook)

        first = timed(lambda: run(1), device, repeats)  # prefill + 1 token
        full = timed(lambda: run(new_tokens), device, repeats)
        per_step = (full - first) / (new_tokens - 1)  # decode steps only
        out[f"b{b}_s_per_step"] = per_step
        out[f"b{b}_total_s"] = full
    return out


def bench_prefill(pipe: Pipeline, device: torch.device, repeats: int) -> tuple[float, int]:
    from mllm.generation import generate

    s = pipe.config.model.vision.image_size
    image = np.random.default_rng(0).integers(0, 255, (s, s, 3), dtype=np.uint8)
    batch = pipe.processor(["<image> Describe the picture."], images=[[image]])
    dev = next(pipe.system.model.parameters()).device
    batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    image_tokens = int((batch["input_ids"] == pipe.system.model.token_ids.image).sum())
    t = timed(lambda: generate(pipe.system.model, batch, max_new_tokens=1, logits_hook=never_stop(pipe)), device, repeats)
    return t, image_tokens


def bench_detector(pipe: Pipeline, device: torch.device, repeats: int) -> dict[str, float]:
    from decoders.detection import DetectionBatch

    det = pipe.system.decoders["detector"]
    c = det.link_dim
    out = {}
    for b in (1, 8):
        images = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(b)]
        states = torch.randn(b, 4, 4, c, device=device)
        mask = torch.ones(b, 4, dtype=torch.bool, device=device)
        batch = DetectionBatch.from_images(images, states, mask, [["a", "b", "c", "d"]] * b, det.config)
        with torch.no_grad():
            t = timed(lambda batch=batch: det(batch), device, repeats)
        out[f"b{b}_s"] = t
    return {"detector_ms_b1": out["b1_s"] * 1e3, "detector_images_per_s_b8": 8 / out["b8_s"]}


def bench_generator(pipe: Pipeline, device: torch.device, steps: int, repeats: int) -> dict[str, float]:
    from decoders.diffusion import GenerationBatch

    gen = pipe.system.decoders["generator"]
    out = {}
    for b in (1, 4):
        states = torch.randn(b, 64, gen.link_dim, device=device)
        batch = GenerationBatch(states, steps=steps, guidance_scale=7.5, seeds=list(range(b)))
        out[b] = timed(lambda batch=batch: gen(batch), device, repeats)
    return {"generator_ms_b1": out[1] * 1e3, "generator_images_per_s_b4": 4 / out[4],
            "generator_steps": steps, "generator_image_size": gen.config.image_size}  # fmt: skip


def bench_compound(pipe: Pipeline, steps: int, repeats: int) -> dict[str, Any]:
    from bench.compound import ANSWER, INSTRUCTION, measure, scene_png

    pipe.config.runtime.decoder_concurrency = "thread"  # one device: decoders overlap as CUDA streams of work
    pipe.logits_hook = forced_answer_hook(pipe.processor.tokenizer, [ANSWER])
    req = Request(images=[scene_png()], instruction=INSTRUCTION, options={"seed": 0, "steps": steps})
    pipe(req)  # warm-up
    try:
        m = measure(pipe, req, repeats)
    finally:
        pipe.logits_hook = None
        pipe.close()
    keep = ("end_to_end_ms", "llm_ms", "decoder_alone_ms", "serial_ms", "critical_path_ms",
            "ratio_to_critical_path", "speedup_vs_serial")  # fmt: skip
    return {k: m[k] for k in keep}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the CPU mode")
    t0 = time.perf_counter()
    if args.cpu:
        pipe = build_tiny(device)
    else:
        pipe = build_realscale(device, torch.bfloat16, args.llm_layers, args.vision_layers)
    build_s = time.perf_counter() - t0
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bw = bandwidth_of(card) if device.type == "cuda" else None
    weights = llm_weight_bytes(pipe)
    bound_ms = weights / bw * 1e3 if bw else None
    with torch.inference_mode():
        dec = bench_decode(pipe, device, args.new_tokens, args.repeats)
        prefill_s, image_tokens = bench_prefill(pipe, device, args.repeats)
    b1_ms = dec["b1_s_per_step"] * 1e3
    result: dict[str, Any] = {
        "mode": "cpu-tiny" if args.cpu else "gpu-7b-shape",
        "device": card, "dtype": "float32" if args.cpu else "bfloat16",
        "llm_layers": pipe.system.model.llava.config.text_config.num_hidden_layers,
        "llm_weight_gb": round(weights / 1e9, 3), "hbm_bandwidth_tb_s": bw / 1e12 if bw else None,
        "build_s": round(build_s, 1), "new_tokens": args.new_tokens,
        "decode_ms_per_token_b1": round(b1_ms, 3),
        "hbm_bound_ms_per_token": round(bound_ms, 3) if bound_ms else None,
        "decode_ratio_to_bound": round(b1_ms / bound_ms, 3) if bound_ms else None,
        "decode_tokens_per_s_b16": round(16 / dec["b16_s_per_step"], 1),
        "decode_tokens_per_s_b32": round(32 / dec["b32_s_per_step"], 1),
        "speedup_vs_sequential_b16": round(16 * dec["b1_total_s"] / dec["b16_total_s"], 2),
        "prefill_ms_576": round(prefill_s * 1e3, 1), "prefill_image_tokens": image_tokens,
    }  # fmt: skip
    result.update({k: round(v, 2) if isinstance(v, float) else v for k, v in bench_detector(pipe, device, args.repeats).items()})
    steps = 2 if args.cpu else args.steps
    result.update({k: round(v, 2) if isinstance(v, float) else v for k, v in bench_generator(pipe, device, steps, args.repeats).items()})
    result["compound"] = bench_compound(pipe, steps, max(2, args.repeats))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="CPU mode: the tiny preset (a smoke run of every measurement)")
    ap.add_argument("--llm-layers", type=int, default=32, help="LLM depth (32 = Vicuna-7B)")
    ap.add_argument("--vision-layers", type=int, default=24, help="CLIP depth (24 = ViT-L/14)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="diffusion steps (GPU mode)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="last line is one JSON object")
    args = ap.parse_args()
    if args.cpu:
        args.new_tokens = min(args.new_tokens, 16)
    torch.manual_seed(0)
    result = run(args)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "realscale.json").write_text(json.dumps(result, indent=2))
    for k, v in result.items():
        print(f"{k}: {v}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
