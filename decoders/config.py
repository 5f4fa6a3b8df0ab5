"""Typed configuration for the task decoders. Helpers of each decoder extend only their own class."""

from __future__ import annotations

from pydantic import Field

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


class KeypointConfig(StrictModel):
    """Query-conditioned keypoint head on the detector's object queries ([POSE])."""

    num_keypoints: int = Field(6, ge=1, description="keypoint slots per instance")
    hidden_size: int = Field(64, ge=8)


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


class EditorConfig(DiffusionConfig):
    """InstructPix2Pix-style editing ([EDIT]); `pretrained` is a diffusers IP2P folder."""

    default_image_guidance: float = Field(1.5, ge=1.0)


class DecodersConfig(StrictModel):
    detector: DetectorConfig = DetectorConfig()
    keypoints: KeypointConfig = KeypointConfig()
    generator: DiffusionConfig = DiffusionConfig()
    editor: EditorConfig = EditorConfig()
