"""Generation ([GEN]) and editing ([EDIT]) decoders: diffusers UNets conditioned on mapped link states.

Both decoders share one design (VisionLLM v2, `modeling_sd.py` / `modeling_instruct_pix2pix.py`):
a `LinkMapper` turns the route's projected link states into prompt embeddings that replace the
CLIP text encoder, and a learned null embedding replaces the empty prompt for classifier-free
guidance. Training is the usual MSE on the configured target (noise, velocity or sample) under a
`DDPMScheduler`; inference goes through the stock diffusers pipelines fed `prompt_embeds` / `negative_prompt_embeds`
(`StableDiffusionPipeline`, `StableDiffusionInstructPix2PixPipeline`), built once and reused.

Latent space (a tiny or SD-1.5 `AutoencoderKL`) is the default. With `config.latent = False`
the UNet works on pixels (3 channels, [-1, 1]); the pipelines need a VAE, so pixel-space
sampling runs the same scheduler loop here (`_sample_pixels`).

Images: inputs are uint8 (H, W, 3) arrays or PIL images, resized to the decoder's square
`image_size`; an edit is resized back to its source's size. With targets, a call computes only
the loss (sampling inside a training step would be wasted work) and `predictions` is empty.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from decoders.base import DecoderInputError, DecoderOutput, check_link_states
from decoders.config import DiffusionConfig, EditorConfig
from decoders.images import ImageInput, prepare_images
from decoders.mapper import LinkMapper
from decoders.text_encoder import FrozenTextEncoder
from mllm.config import require_folder

CONFIG_FILE = "superlink_decoder.json"
MAPPER_FILE = "mapper.safetensors"
INFERENCE_SCHEDULERS: dict[str, type] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm": DPMSolverMultistepScheduler,
}
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)  # mean = std = 0.5 maps [0, 1] to [-1, 1]


@dataclass
class GeneratedImage:
    """One generated or edited image; `seed` is the generator seed when the caller gave one."""

    image: np.ndarray  # (H, W, 3) uint8
    seed: int | None = None

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.image)


@dataclass
class GenerationBatch:
    """[GEN] input. Options left None take the config defaults; seeds give one generator per item."""

    link_states: torch.Tensor  # (B, Q, link_dim), already projected by the route
    steps: int | None = None
    guidance_scale: float | None = None
    seeds: list[int] | None = None


@dataclass
class EditBatch(GenerationBatch):
    """[EDIT] input: the [GEN] fields plus one source image per item."""

    source_images: Sequence[ImageInput] | None = None  # uint8 (H, W, 3) arrays or PIL images
    image_guidance_scale: float | None = None


@dataclass
class DiffusionTargets:
    """Training targets: one image per batch item (uint8 (H, W, 3) array or PIL), or a uint8 (B, H, W, 3) array."""

    images: Sequence[ImageInput] | np.ndarray
    # What each target shows, in words ("red circle blue square"), for the frozen text encoder: the teacher
    # conditioning of a decoder pre-training stage and the link alignment loss (config.align_weight).
    texts: Sequence[str] | None = None


# ---- building blocks -----------------------------------------------------------------------


def vae_scale(config: DiffusionConfig) -> int:
    return 2 ** (len(config.vae_block_out_channels) - 1) if config.latent else 1


def build_unet(config: DiffusionConfig, in_channels: int, out_channels: int) -> UNet2DConditionModel:
    """A UNet of `config`'s widths; the first block has no cross-attention (as the tiny diffusers test model)."""
    n = len(config.block_out_channels)
    return UNet2DConditionModel(
        sample_size=config.image_size // vae_scale(config),
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=config.cross_attention_dim,
    )


def build_vae(config: DiffusionConfig) -> AutoencoderKL:
    n = len(config.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.vae_block_out_channels),
        latent_channels=config.latent_channels,
        sample_size=config.image_size,
    )


def default_scheduler_config(config: DiffusionConfig) -> dict[str, Any]:
    """SD-1.5's noise schedule without clipping, as the pipelines expect; `prediction_type` from the config.

    By default steps are spaced "leading" with steps_offset=1 (SD-1.5); with `zero_terminal_snr` the betas
    are rescaled and the steps spaced "trailing" (offset 0), so sampling starts from pure noise.
    """
    sched = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=0 if config.zero_terminal_snr else 1,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.zero_terminal_snr,
        timestep_spacing="trailing" if config.zero_terminal_snr else "leading",
    )
    return dict(sched.config)


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) Min-SNR-gamma loss weights for timesteps t under `scheduler`'s prediction type: the loss at each
    timestep counts as an x0 loss weighed min(SNR, gamma), so nearly clean timesteps stop dominating."""
    alphas = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alphas / (1.0 - alphas).clamp_min(1e-12)
    capped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return capped / (snr + 1.0)
    if kind == "sample":
        return capped
    return capped / snr.clamp_min(1e-12)  # epsilon


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [-1, 1] -> list of uint8 (H, W, 3)."""
    x = ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())


def float_to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """Pipeline output (B, H, W, 3) float in [0, 1] -> list of uint8 (H, W, 3)."""
    return list((np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8))


# ---- shared base -----------------------------------------------------------------------------


class _DiffusionDecoder(nn.Module):
    """Mapper + UNet (+ frozen VAE) + schedulers, the loss, validation and save/load shared by [GEN] and [EDIT]."""

    kind: ClassVar[str]
    config_class: ClassVar[type[DiffusionConfig]]
    image_channels_in: ClassVar[int]  # conditioning images concatenated to the UNet input: 0 or 1
    batch_class: ClassVar[type[GenerationBatch]]
    pipeline_class: ClassVar[type[StableDiffusionPipeline] | type[StableDiffusionInstructPix2PixPipeline]]

    def __init__(
        self,
        config: DiffusionConfig,
        unet: UNet2DConditionModel | None = None,
        vae: AutoencoderKL | None = None,
        scheduler_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.link_dim = config.resolved_link_dim
        channels = config.latent_channels if config.latent else 3
        self.mapper = LinkMapper(
            self.link_dim, config.cross_attention_dim, config.prompt_tokens, config.mapper_heads
        )
        self.text_encoder = FrozenTextEncoder(config.cross_attention_dim, config.prompt_tokens)  # no weights
        # "link": the UNet is conditioned on the mapped link states (inference always is). "text": a training
        # stage conditions it on the frozen text encoder instead (decoder pre-training, VisionLLM v2 style).
        self.conditioning: Literal["link", "text"] = "link"
        self.unet = (
            unet
            if unet is not None
            else build_unet(config, channels * (1 + self.image_channels_in), channels)
        )
        self.vae = (vae if vae is not None else build_vae(config)) if config.latent else None
        self._check_components(channels)
        if self.vae is not None:
            self.vae.requires_grad_(False)  # frozen, as in VisionLLM v2
        self.unet.requires_grad_(config.train_unet)
        sched_cfg = scheduler_config if scheduler_config is not None else default_scheduler_config(config)
        self.train_scheduler = DDPMScheduler.from_config(sched_cfg)
        self.scheduler = INFERENCE_SCHEDULERS[config.scheduler].from_config(sched_cfg)
        self.pipeline = self._build_pipeline() if self.vae is not None else None

    def _check_components(self, channels: int) -> None:
        want = channels * (1 + self.image_channels_in)
        if self.unet.config.in_channels != want or self.unet.config.out_channels != channels:
            raise ValueError(
                f"{self.kind}: UNet has in/out channels {self.unet.config.in_channels}/{self.unet.config.out_channels}, "
                f"expected {want}/{channels} for {'latent' if self.config.latent else 'pixel'} space"
            )
        if self.unet.config.cross_attention_dim != self.config.cross_attention_dim:
            raise ValueError(
                f"{self.kind}: UNet cross_attention_dim {self.unet.config.cross_attention_dim} "
                f"!= config.cross_attention_dim {self.config.cross_attention_dim}"
            )

    def _build_pipeline(self) -> StableDiffusionPipeline | StableDiffusionInstructPix2PixPipeline:
        """The stock diffusers pipeline over this decoder's components; the mapper stands in for the text encoder."""
        pipe = self.pipeline_class(
            vae=self.vae,
            text_encoder=None,
            tokenizer=None,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ---- validation ----

    def _check_common(self, batch: GenerationBatch) -> torch.Tensor:
        """Validated link states (B, Q, link_dim) on the UNet's device."""
        name = f"{self.kind}.link_states"
        check_link_states(batch.link_states, name, self.link_dim)
        if batch.link_states.dim() != 3 or batch.link_states.shape[0] < 1 or batch.link_states.shape[1] < 1:
            raise DecoderInputError(
                f"{name}: expected shape (batch, num_queries, {self.link_dim}) with batch, num_queries >= 1, "
                f"got {tuple(batch.link_states.shape)}"
            )
        return batch.link_states.to(self.device, self.unet.dtype)

    def _check_options(self, batch: GenerationBatch) -> tuple[int, float]:
        steps = self.config.default_steps if batch.steps is None else batch.steps
        if (
            isinstance(steps, bool)
            or not isinstance(steps, int)
            or not 1 <= steps <= self.config.num_train_timesteps
        ):
            raise DecoderInputError(
                f"{self.kind}: steps must be an integer in [1, {self.config.num_train_timesteps}], got {steps!r}"
            )
        guidance = self.config.default_guidance if batch.guidance_scale is None else batch.guidance_scale
        check_guidance(guidance, f"{self.kind}: guidance_scale")
        return steps, float(guidance)

    def _generators(self, seeds: list[int] | None, batch_size: int) -> list[torch.Generator]:
        """One CPU generator per item (CPU so a seed gives the same image on any device)."""
        if seeds is None:
            return [
                torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
                for _ in range(batch_size)
            ]
        if len(seeds) != batch_size or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise DecoderInputError(
                f"{self.kind}: seeds must be a list of {batch_size} integers (one per item), got {seeds!r}"
            )
        return [torch.Generator().manual_seed(s) for s in seeds]

    def _pixels(
        self, images: Sequence[ImageInput] | np.ndarray, batch_size: int, what: str
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images resized to (image_size, image_size) in [-1, 1]: (B, 3, S, S), and the original sizes [(w, h)]."""
        if images is None or len(images) != batch_size:
            got = "none" if images is None else len(images)
            raise DecoderInputError(
                f"{self.kind}: expected {batch_size} {what} (one per batch item), got {got}"
            )
        pixels, sizes = prepare_images(
            list(images), self.config.image_size, self.config.max_image_pixels, HALF, HALF
        )
        return pixels.to(self.device, self.unet.dtype), sizes

    # ---- training ----

    @torch.no_grad()
    def _encode_target(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> the diffusion space: scaled VAE latents, or the pixels themselves."""
        if self.vae is None:
            return pixels
        return self.vae.encode(pixels).latent_dist.sample(generator) * self.vae.config.scaling_factor

    def _noise_loss(
        self,
        x0: torch.Tensor,
        cond: torch.Tensor,
        image_cond: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Noise-prediction MSE at random timesteps; x0 (B, c, h, w), cond (B, T, D), image_cond (B, c, h, w)."""
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (b,), generator=generator).to(
            x0.device
        )
        xt = self.train_scheduler.add_noise(x0, noise, t)  # (B, c, h, w)
        inp = xt if image_cond is None else torch.cat([xt, image_cond], dim=1)
        pred = self.unet(inp, t, encoder_hidden_states=cond).sample
        kind = self.train_scheduler.config.prediction_type
        if kind == "v_prediction":
            target = self.train_scheduler.get_velocity(x0, noise, t)
        elif kind == "sample":
            target = x0
        else:
            target = noise
        if self.config.loss_weighting == "uniform":
            return F.mse_loss(pred.float(), target.float())
        per_item = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.dim())))  # (B,)
        return (per_item * min_snr_weights(self.train_scheduler, t, self.config.min_snr_gamma)).mean()

    def _condition(self, states: torch.Tensor, targets: DiffusionTargets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The UNet's training condition (B, T, D) and the link alignment loss, when the targets carry texts."""
        mapped = self.mapper(states)  # (B, T, D)
        if targets.texts is None:
            if self.conditioning == "text":
                raise ValueError(f"{self.kind}: text conditioning needs DiffusionTargets.texts")
            return mapped, {}
        text = self.text_encoder(targets.texts).to(mapped)
        extra = {"align_mse": F.mse_loss(mapped.float(), text.float())} if self.config.align_weight > 0 else {}
        return (text if self.conditioning == "text" else mapped), extra

    def _total(self, noise_mse: torch.Tensor, extra: dict[str, torch.Tensor]) -> DecoderOutput:
        loss = noise_mse + self.config.align_weight * extra["align_mse"] if extra else noise_mse
        return DecoderOutput(predictions=[], loss=loss, losses={"noise_mse": noise_mse, **extra})

    def _uniform(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) uniform draws for condition dropout; all ones (never drop) in eval mode."""
        if not self.training:
            return torch.ones(batch_size, device=self.device)
        return torch.rand(batch_size, generator=generator).to(self.device)

    # ---- sampling ----

    def _sample_pixels(
        self,
        embeds: torch.Tensor,
        image_cond: torch.Tensor | None,
        combine: Callable[..., torch.Tensor],
        steps: int,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """Pixel-space sampling loop (the pipelines need a VAE).

        embeds (k*B, T, D) hold k conditioning rows per item; `combine` takes the k noise chunks
        and returns the guided noise (B, 3, S, S). image_cond (k*B, 3, S, S) or None.
        """
        k = embeds.shape[0] // len(generators)
        s = self.config.image_size
        sched = self.scheduler
        sched.set_timesteps(steps, device=self.device)
        x = torch.stack([torch.randn(3, s, s, generator=g) for g in generators]).to(
            self.device, self.unet.dtype
        )
        x = x * sched.init_noise_sigma  # (B, 3, S, S)
        extra = {"generator": generators} if "generator" in inspect.signature(sched.step).parameters else {}
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x] * k), t)
            if image_cond is not None:
                inp = torch.cat([inp, image_cond], dim=1)
            noise = self.unet(inp, t, encoder_hidden_states=embeds).sample
            x = sched.step(combine(*noise.chunk(k)), t, x, **extra).prev_sample
        return x

    def _image_output(self, images: list[np.ndarray], seeds: list[int] | None) -> DecoderOutput:
        """One `GeneratedImage` per item, carrying its seed when the caller gave seeds."""
        item_seeds: list[int | None] = list(seeds) if seeds else [None] * len(images)
        return DecoderOutput(
            predictions=[GeneratedImage(img, seed) for img, seed in zip(images, item_seeds, strict=True)]
        )

    # ---- protocol ----

    def forward(
        self,
        batch: GenerationBatch,
        targets: DiffusionTargets | None = None,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput:
        if not isinstance(batch, self.batch_class):
            raise DecoderInputError(
                f"{self.kind}: expected a {self.batch_class.__name__}, got {type(batch).__name__}"
            )
        if targets is not None and not isinstance(targets, DiffusionTargets):
            raise DecoderInputError(
                f"{self.kind}: targets must be DiffusionTargets, got {type(targets).__name__}"
            )
        if targets is not None:
            return self.loss(batch, targets, generator=generator)
        return self.generate(batch)

    def loss(
        self, batch: GenerationBatch, targets: DiffusionTargets, generator: torch.Generator | None = None
    ) -> DecoderOutput:
        raise NotImplementedError

    def generate(self, batch: GenerationBatch) -> DecoderOutput:
        raise NotImplementedError

    # ---- save / load ----

    def save_pretrained(self, path: str | Path) -> None:
        """A diffusers folder (model_index.json, unet/, vae/, scheduler/) plus the mapper and this decoder's config."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.pipeline is not None:
            self.pipeline.save_pretrained(path, safe_serialization=True)
        else:
            self.unet.save_pretrained(path / "unet", safe_serialization=True)
            self.scheduler.save_pretrained(path / "scheduler")
        state = {k: v.detach().contiguous().cpu() for k, v in self.mapper.state_dict().items()}
        save_file(state, str(path / MAPPER_FILE))
        saved = self.config.model_copy(update={"pretrained": None})  # the folder itself holds the weights now
        meta = {"kind": self.kind, "config": saved.model_dump(mode="json")}
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Self:
        """Load what `save_pretrained` wrote (components, mapper weights, config)."""
        path = Path(path)
        meta_path = path / CONFIG_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a saved SuperLink {cls.kind} decoder")
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{path}: holds a {meta.get('kind')!r} decoder, expected {cls.kind!r}")
        config = cls.config_class.model_validate(meta["config"])
        unet, vae, sched_cfg = load_components(path, need_vae=config.latent)
        decoder = cls(config, unet=unet, vae=vae, scheduler_config=sched_cfg)
        decoder.mapper.load_state_dict(load_file(str(path / MAPPER_FILE)), strict=True)
        return decoder

    @classmethod
    def _from_diffusers(cls, path: str | Path, config: DiffusionConfig | None) -> Self:
        """Load UNet, VAE and scheduler of a diffusers folder; the mapper is built fresh at the UNet's width."""
        unet, vae, sched_cfg = load_components(Path(path), need_vae=True)
        config = config_from_components(config or cls.config_class(), unet, vae, sched_cfg, str(path))
        return cls(config, unet=unet, vae=vae, scheduler_config=sched_cfg)


def check_guidance(value: object, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 1.0
    ):
        raise DecoderInputError(f"{name} must be a finite number >= 1 (1 disables guidance), got {value!r}")


def load_components(
    path: Path, need_vae: bool
) -> tuple[UNet2DConditionModel, AutoencoderKL | None, dict[str, Any]]:
    """UNet, VAE (when latent) and scheduler config from a diffusers pipeline folder; text encoder/tokenizer ignored."""
    path = require_folder(path, "a diffusers pipeline")
    needed = ["unet", "scheduler"] + (["vae"] if need_vae else [])
    missing = [sub for sub in needed if not (path / sub).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{path}: not a diffusers pipeline folder, missing {', '.join(s + '/' for s in missing)} "
            "(expected the SD-1.5 layout: model_index.json, unet/, vae/, scheduler/)"
        )
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=weights_variant(path / "unet"))
    vae = None
    if need_vae:
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=weights_variant(path / "vae"))
    sched_cfg = dict(DDPMScheduler.load_config(path, subfolder="scheduler"))
    return unet, vae, sched_cfg


def weights_variant(folder: Path) -> str | None:
    """None when `folder` has plain weight files; "fp16" when it has only the fp16 variant (a download made
    with variant="fp16", which diffusers does not find unless told)."""
    files = [f.name for f in folder.glob("diffusion_pytorch_model*")]
    if any(f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin") for f in files) or not files:
        return None
    if any(".fp16." in f for f in files):
        return "fp16"
    return None


def config_from_components(
    base: DiffusionConfig,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    sched_cfg: dict[str, Any],
    path: str,
) -> DiffusionConfig:
    """`base` with the architecture fields replaced by what the loaded checkpoint has."""
    cross = unet.config.cross_attention_dim
    if not isinstance(cross, int):
        raise ValueError(
            f"{path}: per-block cross_attention_dim {cross!r} is not supported; expected one integer"
        )
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    update = {
        "pretrained": path,
        "latent": True,
        "cross_attention_dim": cross,
        "block_out_channels": list(unet.config.block_out_channels),
        "layers_per_block": unet.config.layers_per_block,
        "latent_channels": vae.config.latent_channels,
        "vae_block_out_channels": list(vae.config.block_out_channels),
        "image_size": unet.config.sample_size * vae_scale_factor,
        "num_train_timesteps": sched_cfg.get("num_train_timesteps", base.num_train_timesteps),
    }
    return type(base).model_validate({**base.model_dump(), **update})


# ---- [GEN] -----------------------------------------------------------------------------------


class GenerationDecoder(_DiffusionDecoder):
    """[GEN]: link states -> images (text-to-image diffusion with the text encoder replaced by the mapper)."""

    kind = "GEN"
    config_class = DiffusionConfig
    image_channels_in = 0
    batch_class = GenerationBatch
    pipeline_class = StableDiffusionPipeline

    @classmethod
    def from_pretrained_sd(cls, path: str | Path, config: DiffusionConfig | None = None) -> GenerationDecoder:
        """A diffusers SD-1.5-layout folder (text_encoder/tokenizer optional and unused); `config` sets the mapper."""
        return cls._from_diffusers(path, config)

    def loss(
        self, batch: GenerationBatch, targets: DiffusionTargets, generator: torch.Generator | None = None
    ) -> DecoderOutput:
        """Noise MSE for the target images; `generator` fixes noise, timesteps and condition dropout."""
        states = self._check_common(batch)
        b = states.shape[0]
        pixels, _ = self._pixels(targets.images, b, "target images")
        x0 = self._encode_target(pixels, generator)  # (B, c, h, w)
        cond, extra = self._condition(states, targets)  # (B, T, D)
        cond = self.mapper.drop_to_null(cond, self._uniform(b, generator) < self.config.cond_drop)
        return self._total(self._noise_loss(x0, cond, None, generator), extra)

    @torch.no_grad()
    def generate(self, batch: GenerationBatch) -> DecoderOutput:
        states = self._check_common(batch)
        steps, guidance = self._check_options(batch)
        b = states.shape[0]
        generators = self._generators(batch.seeds, b)
        cond, null = self.mapper(states), self.mapper.null(b)  # (B, T, D) each
        if self.pipeline is not None:
            s = self.config.image_size
            out = self.pipeline(
                prompt_embeds=cond,
                negative_prompt_embeds=null,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                height=s,
                width=s,
                output_type="np",
            )
            images = float_to_uint8(out.images)
        else:
            images = to_uint8(self._sample_pixels_gen(cond, null, guidance, steps, generators))
        return self._image_output(images, batch.seeds)

    def _sample_pixels_gen(
        self,
        cond: torch.Tensor,
        null: torch.Tensor,
        guidance: float,
        steps: int,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        if guidance == 1.0:
            return self._sample_pixels(cond, None, lambda c: c, steps, generators)
        embeds = torch.cat([cond, null])  # (2B, T, D): conditional rows first
        return self._sample_pixels(embeds, None, lambda c, u: u + guidance * (c - u), steps, generators)


# ---- [EDIT] ----------------------------------------------------------------------------------


class EditDecoder(_DiffusionDecoder):
    """[EDIT]: link states + source image -> edited image (InstructPix2Pix: source latents concatenated to the input)."""

    kind = "EDIT"
    config_class = EditorConfig
    image_channels_in = 1
    batch_class = EditBatch
    pipeline_class = StableDiffusionInstructPix2PixPipeline
    config: EditorConfig

    @classmethod
    def from_pretrained_ip2p(cls, path: str | Path, config: EditorConfig | None = None) -> EditDecoder:
        """A diffusers InstructPix2Pix folder (UNet with 2 x latent channels in); `config` sets the mapper."""
        return cls._from_diffusers(path, config)

    @torch.no_grad()
    def _encode_source(self, pixels: torch.Tensor) -> torch.Tensor:
        """Source conditioning as the IP2P pipeline makes it: the unscaled VAE latent mode, or the pixels."""
        if self.vae is None:
            return pixels
        return self.vae.encode(pixels).latent_dist.mode()

    def loss(
        self, batch: EditBatch, targets: DiffusionTargets, generator: torch.Generator | None = None
    ) -> DecoderOutput:
        """Noise MSE for the target (edited) images, with InstructPix2Pix joint dropout of text and image condition."""
        states = self._check_common(batch)
        b = states.shape[0]
        source, _ = self._pixels(batch.source_images, b, "source images")
        target, _ = self._pixels(targets.images, b, "target images")
        x0 = self._encode_target(target, generator)  # (B, c, h, w)
        image_cond = self._encode_source(source)  # (B, c, h, w)
        # train_instruct_pix2pix.py: r < 2p drops text, p <= r < 3p drops the image (both for p <= r < 2p)
        r, p = self._uniform(b, generator), self.config.cond_drop
        cond, extra = self._condition(states, targets)
        cond = self.mapper.drop_to_null(cond, r < 2 * p)
        image_cond = image_cond * ~((r >= p) & (r < 3 * p))[:, None, None, None]
        return self._total(self._noise_loss(x0, cond, image_cond, generator), extra)

    @torch.no_grad()
    def generate(self, batch: EditBatch) -> DecoderOutput:
        states = self._check_common(batch)
        steps, guidance = self._check_options(batch)
        image_guidance = (
            self.config.default_image_guidance
            if batch.image_guidance_scale is None
            else batch.image_guidance_scale
        )
        check_guidance(image_guidance, "EDIT: image_guidance_scale")
        b = states.shape[0]
        source, sizes = self._pixels(batch.source_images, b, "source images")
        generators = self._generators(batch.seeds, b)
        cond, null = self.mapper(states), self.mapper.null(b)  # (B, T, D) each
        if self.pipeline is not None:
            # The pipeline builds the IP2P guidance rows itself: embeds [cond, null, null] against
            # image latents [source, source, zeros]; negative_prompt_embeds is just the null (B, T, D).
            out = self.pipeline(
                prompt_embeds=cond,
                negative_prompt_embeds=null,
                image=(source + 1.0) / 2.0,  # the pipeline takes [0, 1] and normalises itself
                num_inference_steps=steps,
                guidance_scale=guidance,
                image_guidance_scale=float(image_guidance),
                generator=generators,
                output_type="np",
            )
            images = float_to_uint8(out.images)
        else:
            images = to_uint8(
                self._sample_pixels_edit(
                    cond, null, source, guidance, float(image_guidance), steps, generators
                )
            )
        images = [resize_to(img, size) for img, size in zip(images, sizes, strict=True)]
        return self._image_output(images, batch.seeds)

    def _sample_pixels_edit(
        self,
        cond: torch.Tensor,
        null: torch.Tensor,
        source: torch.Tensor,
        guidance: float,
        image_guidance: float,
        steps: int,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """The pipeline's rule: guidance only when guidance > 1, rows [cond/src, null/src, null/zeros]."""
        if guidance == 1.0:
            return self._sample_pixels(cond, source, lambda c: c, steps, generators)
        embeds = torch.cat([cond, null, null])  # (3B, T, D)
        image_cond = torch.cat([source, source, torch.zeros_like(source)])  # (3B, 3, S, S)

        def combine(text: torch.Tensor, image: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
            return uncond + guidance * (text - image) + image_guidance * (image - uncond)

        return self._sample_pixels(embeds, image_cond, combine, steps, generators)


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (S, S, 3) -> uint8 (h, w, 3) for size (w, h); unchanged when it already matches."""
    w, h = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))
