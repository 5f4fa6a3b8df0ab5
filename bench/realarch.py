"""Random-weight folders with the real architectures of VisionLLM v2's parts, in the hub's layouts.

    folders = build_folders(Path("/tmp/realarch"))          # once; later calls reuse the folders
    cfg = realarch_config(folders)                           # configs/visionllm_v2.yaml pointed at them

What is built (the libraries' own classes, random weights, nothing downloaded):
  llava/      LLaVA-1.5-7B widths (CLIP ViT-L/14-336: 1024 wide, 16 heads; Vicuna-7B: 4096 wide, 32 heads,
              11008 MLP, 32064 embedding rows for 32002 tokens) at reduced depth (llm_layers, vision_layers);
              a LlamaTokenizerFast of 32000 pieces with <unk> <s> </s> = 0 1 2, <image> = 32000, <pad> = 32001;
              float16 weights sharded in two files with model.safetensors.index.json and transformers 4.x
              key names (language_model.model.*, language_model.lm_head, vision_tower.*, multi_modal_projector.*).
  grounding-dino-tiny/  the full Grounding DINO-T (Swin-T backbone, 6+6 layers, 900 queries, BERT-base text).
  stable-diffusion-v1-5/, instruct-pix2pix/  SD-1.5 UNet (320/640/1280/1280, cross-attention 768; the IP2P one
              takes 8 channels) and VAE as fp16-variant files only (diffusion_pytorch_model.fp16.safetensors),
              scheduler configs as shipped; `unet_layers_per_block` below 2 shrinks the UNets for speed.
Weights are made directly in their stored dtype without running the libraries' initialisers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import (
    CLIPVisionConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    LlamaConfig,
    LlamaTokenizerFast,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.initialization import no_init_weights

from mllm.embeddings import default_dtype

LLAMA_VOCAB = 32000
IMAGE_ID, PAD_ID, EMBED_ROWS = 32000, 32001, 32064
DONE = ".complete"


BLOCK = 1_000_003  # a prime: tiling this many random values gives no two rows of a matrix alike


@torch.no_grad()
def fill_random(module: torch.nn.Module, seed: int = 0) -> None:
    """Small random matrices, unit norm scales, zero biases (stands in for trained weights).

    Matrices tile one block of random values (a billion fresh normal draws would take minutes here)."""
    g = torch.Generator().manual_seed(seed)
    block = torch.randn(2 * BLOCK, generator=g).mul_(0.02)
    blocks: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            src = blocks.setdefault((p.dtype, p.device), block.to(p.device, p.dtype))
            flat, start = p.view(-1), int(torch.randint(BLOCK, (1,), generator=g))
            for i in range(0, flat.numel(), BLOCK):  # plain copies in the parameter's dtype
                n = min(BLOCK, flat.numel() - i)
                flat[i : i + n].copy_(src[start : start + n])
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def llama_tokenizer() -> LlamaTokenizerFast:
    """A Llama-style fast tokenizer of exactly 32000 pieces (byte fallback, metaspace) plus <image>, <pad>."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    pieces = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += list("0123456789.,?!'-:;()")
    merges: list[tuple[str, str]] = []
    for word in ["the", "detect", "segment", "find", "draw", "make", "star", "circle", "square", "red", "blue"]:
        left = "▁"
        for ch in word:
            merges.append((left, ch))
            left += ch
            pieces.append(left)
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    while len(vocab) < LLAMA_VOCAB:  # unreachable filler pieces: the real vocabulary's size and ids
        vocab[f"▁piece{len(vocab)}"] = len(vocab)
    merges = [m for m in dict.fromkeys(merges) if "".join(m) in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    fast = LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_tokens(["<image>"], special_tokens=True)
    fast.add_special_tokens({"pad_token": "<pad>"})
    assert fast.convert_tokens_to_ids("<image>") == IMAGE_ID and fast.pad_token_id == PAD_ID
    return fast


def llava_config(llm_layers: int, vision_layers: int) -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers,
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)  # fmt: skip
    text = LlamaConfig(vocab_size=EMBED_ROWS, hidden_size=4096, intermediate_size=11008, num_hidden_layers=llm_layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_ID, pad_token_id=PAD_ID,
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", dtype="float16")  # fmt: skip


def v4_key(name: str) -> str:
    """transformers 5 LLaVA key -> the 4.x name the hub's llava-hf checkpoints carry."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model.") :]
    if name.startswith("lm_head."):
        return "language_model." + name
    if name.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + name[len("model.vision_tower.") :]
    if name.startswith("model."):
        return name[len("model.") :]
    return name


def write_llava(out: Path, llm_layers: int = 2, vision_layers: int = 2) -> None:
    cfg = llava_config(llm_layers, vision_layers)
    with no_init_weights(), default_dtype(torch.float16):
        model = LlavaForConditionalGeneration(cfg)
    fill_random(model, seed=1)
    state = {v4_key(k): v.contiguous() for k, v in model.state_dict().items()}
    del model
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(out / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    cfg.save_pretrained(out)
    llama_tokenizer().save_pretrained(out)


def write_grounding_dino(out: Path) -> None:
    """Grounding DINO-T: the library's defaults are the tiny checkpoint's architecture (Swin-T, BERT-base)."""
    with no_init_weights():
        model = GroundingDinoForObjectDetection(GroundingDinoConfig())
        model.tie_weights()  # the shared box heads, as post_init would tie them
    fill_random(model, seed=2)
    model.save_pretrained(out)


def sd_unet(in_channels: int, layers_per_block: int, sample_size: int = 64) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )  # fmt: skip


def sd_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip


SCHEDULERS: dict[str, dict[str, Any]] = {
    "sd": {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
           "clip_sample": False},
    "ip2p": {"_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "steps_offset": 1},
}  # fmt: skip


def write_diffusion(
    out: Path, in_channels: int, scheduler: str, layers_per_block: int = 2, sample_size: int = 64
) -> None:
    """A diffusers pipeline folder with fp16-variant weights only (as fetched with variant="fp16").
    `sample_size` is the UNet's default latent side (64 = 512 px); it changes no weight."""
    with no_init_weights(), default_dtype(torch.float16):
        unet, vae = sd_unet(in_channels, layers_per_block, sample_size), sd_vae()
    for part, module, seed in (("unet", unet, 3 + in_channels), ("vae", vae, 5)):
        fill_random(module, seed)
        module.save_pretrained(out / part, variant="fp16", safe_serialization=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULERS[scheduler], indent=2))
    pipe = "StableDiffusionPipeline" if scheduler == "sd" else "StableDiffusionInstructPix2PixPipeline"
    index = {"_class_name": pipe, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", SCHEDULERS[scheduler]["_class_name"]]}  # fmt: skip
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def build_folders(
    root: Path, llm_layers: int = 2, vision_layers: int = 2, unet_layers_per_block: int = 2, sample_size: int = 64
) -> dict[str, Path]:
    """Write the four folders under `root` (skipped when a complete set with these sizes is there)."""
    spec = {"llm_layers": llm_layers, "vision_layers": vision_layers, "unet_layers_per_block": unet_layers_per_block,
            "sample_size": sample_size}  # fmt: skip
    folders = {name: root / name for name in ("llava", "grounding-dino-tiny", "stable-diffusion-v1-5", "instruct-pix2pix")}
    done = root / DONE
    if done.is_file() and json.loads(done.read_text()) == spec:
        return folders
    if root.exists():
        shutil.rmtree(root)
    write_llava(folders["llava"], llm_layers, vision_layers)
    write_grounding_dino(folders["grounding-dino-tiny"])
    write_diffusion(folders["stable-diffusion-v1-5"], 4, "sd", unet_layers_per_block, sample_size)
    write_diffusion(folders["instruct-pix2pix"], 8, "ip2p", unet_layers_per_block, sample_size)
    done.write_text(json.dumps(spec))
    return folders


def realarch_config(folders: dict[str, Path], **decoder_overrides: Any) -> Any:
    """configs/visionllm_v2.yaml with its `pretrained` paths pointed at `folders`."""
    from router.config import load_config

    cfg = load_config("visionllm_v2")
    cfg.model.pretrained = str(folders["llava"])
    cfg.decoders.detector.pretrained = str(folders["grounding-dino-tiny"])
    cfg.decoders.generator.pretrained = str(folders["stable-diffusion-v1-5"])
    cfg.decoders.editor.pretrained = str(folders["instruct-pix2pix"])
    for section, values in decoder_overrides.items():
        for key, value in values.items():
            setattr(getattr(cfg.decoders, section), key, value)
    return cfg
