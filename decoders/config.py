"""Typed configuration for the task decoders. Helpers of each decoder extend only their own class."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from decoders.registry import decoder_kind
from mllm.config import StrictModel


class DetectorConfig(StrictModel):
    """Grounding DINO with a mask head ([DET], [SEG], [GRD]); `pretrained` is a local transformers folder."""

    pretrained: str | None = None
    image_size: int = Field(128, ge=64, description="square side the decoder image is resized to")
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    d_model: int = Field(32, ge=8)
    num_queries: int = Field(10, ge=1)
    encoder_layers: int = Field(1, ge=1)
    decoder_layers: int = Field(2, ge=2)
    max_phrases: int = Field(16, ge=1)
    mask_size: int = Field(32, ge=8, description="side of predicted mask logits before upsampling")
    # Built-from-config sizes (ignored when `pretrained` is set: the folder's config.json wins).
    backbone_embed_dim: int = Field(16, ge=8, description="Swin embed_dim; channels double per stage")
    backbone_depths: list[int] = [1, 1, 1, 1]
    num_heads: int = Field(2, ge=1, description="attention heads in the encoder and decoder")
    ffn_dim: int = Field(64, ge=8)
    num_points: int = Field(2, ge=1, description="deformable-attention sampling points per head and level")
    # Training aids (issue: link-conditioned detection learned slowly). Both default off so older checkpoints
    # load unchanged. encoder_loss: DINO's encoder-side set loss on the two-stage proposals, which otherwise get no
    # gradient, so the top-k queries would be picked by an untrained scorer. logit_calibration: a learned
    # temperature and bias on the contrastive logits (q.t / sqrt(d) * exp(s) + b, b starting at a 1% prior).
    encoder_loss: bool = False
    logit_calibration: bool = False
    align_weight: float = Field(
        0.0, ge=0.0,
        description="weight of the MSE between each phrase's link vector (queries averaged) and the frozen text "
        "encoder's pooled embedding of the phrase: VisionLLM v2's generation-link alignment applied to the "
        "perception links, so phrases cannot reach the detector as one vector; 0 = off",
    )
    # Prediction defaults; a batch may override them.
    score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    top_k: int = Field(100, ge=1, description="most detections kept per image before thresholding")

    @model_validator(mode="after")
    def _check_sizes(self) -> DetectorConfig:
        # Grounding DINO's input projections use GroupNorm(32, d_model).
        if self.d_model % 32:
            raise ValueError(f"d_model must be a multiple of 32 (GroupNorm groups), got {self.d_model}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if len(self.backbone_depths) != 4:
            raise ValueError(f"backbone_depths needs 4 Swin stages, got {self.backbone_depths}")
        return self


class KeypointConfig(StrictModel):
    """Query-conditioned keypoint head on the detector's object queries ([POSE])."""

    num_keypoints: int = Field(6, ge=1, description="keypoint slots per instance")
    hidden_size: int = Field(64, ge=8)
    num_heads: int = Field(2, ge=1, description="heads of the slot -> link-query cross-attention")
    sigmas: list[float] | None = Field(None, description="OKS sigma per slot; None -> 0.05 for every slot")
    share_detector: bool = Field(
        False,
        description="True: run on the [DET] decoder's Grounding DINO in-process (one set of weights, as UniPose "
        "sits on the same detector); False: its own copy, loaded from detector.pretrained when that is set",
    )

    @model_validator(mode="after")
    def _check_sigmas(self) -> KeypointConfig:
        if self.sigmas is not None and (len(self.sigmas) != self.num_keypoints or min(self.sigmas) <= 0):
            raise ValueError(f"sigmas needs {self.num_keypoints} positive values, got {self.sigmas}")
        return self


class DiffusionConfig(StrictModel):
    """Latent diffusion conditioned on mapped link states ([GEN]); `pretrained` is a diffusers SD folder."""

    pretrained: str | None = None
    image_size: int = Field(32, ge=8)
    cross_attention_dim: int = Field(32, ge=8)
    prompt_tokens: int = Field(8, ge=1, description="length of the mapped prompt embedding")
    block_out_channels: list[int] = [32, 64]
    latent: bool = True
    num_train_timesteps: int = Field(1000, ge=10)
    default_steps: int = Field(20, ge=1)
    default_guidance: float = Field(5.0, ge=1.0)
    link_dim: int | None = Field(None, ge=1, description="width of projected link states; None = cross_attention_dim")
    mapper_heads: int = Field(4, ge=1, description="attention heads of the mapper transformer")
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    vae_block_out_channels: list[int] = [32, 64]
    scheduler: Literal["ddim", "ddpm", "euler", "dpm"] = Field("ddim", description="inference scheduler")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(
        "epsilon", description="what the UNet predicts (SD-1.5: epsilon); used when no pretrained scheduler is loaded"
    )
    zero_terminal_snr: bool = Field(
        False,
        description="rescale the noise schedule to zero terminal SNR and space inference steps 'trailing' (pair it "
        "with v_prediction); fixes the brightness and colour shifts of flat images trained from scratch",
    )
    cond_drop: float = Field(0.1, ge=0.0, lt=1.0, description="classifier-free guidance drop rate in training")
    loss_weighting: Literal["uniform", "min_snr"] = Field(
        "uniform",
        description="timestep weighting of the denoising loss: uniform, or Min-SNR-gamma (Hang et al. 2023: each "
        "timestep's loss weighed as if it were an x0 loss capped at min(SNR, min_snr_gamma))",
    )
    min_snr_gamma: float = Field(5.0, gt=0.0, description="the cap of loss_weighting: min_snr")
    align_weight: float = Field(
        0.0, ge=0.0,
        description="weight of the MSE between mapped link states and the frozen text encoder's embedding of the "
        "target's description (VisionLLM v2: 0.1); 0 = off",
    )
    train_unet: bool = Field(True, description="VisionLLM v2 freezes the SD UNet; tiny presets must train it")
    max_image_pixels: int = Field(4096 * 4096, ge=64)

    @model_validator(mode="after")
    def _check_widths(self) -> DiffusionConfig:
        if self.cross_attention_dim % self.mapper_heads:
            raise ValueError(
                f"cross_attention_dim {self.cross_attention_dim} is not divisible by mapper_heads {self.mapper_heads}"
            )
        down = 2 ** (len(self.block_out_channels) - 1) * (2 ** (len(self.vae_block_out_channels) - 1) if self.latent else 1)
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {down} (VAE and UNet downsampling)")
        return self

    @property
    def resolved_link_dim(self) -> int:
        return self.link_dim if self.link_dim is not None else self.cross_attention_dim


class EditorConfig(DiffusionConfig):
    """InstructPix2Pix-style editing ([EDIT]); `pretrained` is a diffusers IP2P folder."""

    default_image_guidance: float = Field(1.5, ge=1.0)
    cond_drop: float = Field(0.05, ge=0.0, lt=1.0 / 3.0, description="IP2P joint drop: text, both, image each at this rate")


BUILTIN_DECODERS = ("detector", "keypoints", "generator", "editor")


class DecodersConfig(StrictModel):
    """Decoders by name. The built-in entries are always there (named after their kinds, with defaults); any
    other entry names its kind, registered in decoders.registry:

        decoders:
          detector: {d_model: 64}
          counter: {kind: counter, hidden: 16}

    Entries read as attributes (`cfg.decoders.detector`) or by name (`cfg.decoders["counter"]`).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    detector: DetectorConfig = DetectorConfig()
    keypoints: KeypointConfig = KeypointConfig()
    generator: DiffusionConfig = DiffusionConfig()
    editor: EditorConfig = EditorConfig()
    _kinds: dict[str, str] = PrivateAttr(default_factory=dict)  # extra entry -> its kind

    @model_validator(mode="after")
    def _named_entries(self) -> DecodersConfig:
        extra = self.__pydantic_extra__ or {}
        for name, raw in list(extra.items()):
            if not name.isidentifier():
                raise ValueError(f"decoder name {name!r} must be an identifier (letters, digits, _)")
            if isinstance(raw, StrictModel) and name in self._kinds:
                continue  # already validated (a copy)
            if not isinstance(raw, dict) or "kind" not in raw:
                raise ValueError(f"decoders.{name}: give its kind, e.g. `{name}: {{kind: detector, ...}}`")
            fields = {k: v for k, v in raw.items() if k != "kind"}
            try:
                kind = decoder_kind(str(raw["kind"]))
            except KeyError as err:
                raise ValueError(f"decoders.{name}: {err.args[0]}") from None
            extra[name] = kind.config.model_validate(fields)
            self._kinds[name] = kind.name
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name, kind in self._kinds.items():
            if name in data:
                data[name] = {"kind": kind, **data[name]}
        return data

    def names(self) -> list[str]:
        """Every entry: the built-ins, then the named ones in config order."""
        return [*BUILTIN_DECODERS, *(self.__pydantic_extra__ or {})]

    def kind_of(self, name: str) -> str:
        if name in BUILTIN_DECODERS:
            return name
        if name not in self._kinds:
            raise KeyError(f"no decoder named {name!r} under decoders:; configured: {self.names()}")
        return self._kinds[name]

    def __getitem__(self, name: str) -> Any:
        if name not in self.names():
            raise KeyError(f"no decoder named {name!r} under decoders:; configured: {self.names()}")
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def sections(self) -> dict[str, Any]:
        return {n: self[n] for n in self.names()}

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.names())
