"""Typed configuration for the MLLM, and the strict YAML loader every layer uses.

Every config class derives from `StrictModel`: unknown keys and wrong types are
errors, never silently dropped. `load_yaml` names the file and the key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file or mapping failed validation; the message names file and key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {e['msg']}{got_s}")
    return "\n".join(lines)


def validate_mapping(data: object, cls: type[M], source: str = "<mapping>") -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_yaml(path: str | Path, cls: type[M]) -> M:
    """Load `path` and validate it as `cls`; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return validate_mapping(data, cls, str(path))


def require_folder(path: str | Path, what: str) -> Path:
    """`path` as an existing folder, or FileNotFoundError "folder not found" naming `what` and where it looked.

    Checked before any library sees the path: transformers and diffusers treat a missing local folder
    as a hub repository name and fail with a confusing connection error.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        where = "" if p.is_absolute() else f" (relative paths are read from the working directory {Path.cwd()})"
        raise FileNotFoundError(f"folder not found: {path} ({what}){where}")
    return p


class VisionConfig(StrictModel):
    """CLIP-style vision tower (built from config, or loaded from a LLaVA checkpoint)."""

    image_size: int = Field(32, ge=8)
    patch_size: int = Field(8, ge=1)
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(64, ge=8)

    @model_validator(mode="after")
    def _check_patch(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        return self

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class TextConfig(StrictModel):
    """Causal LM (Llama layout) built from config for small presets."""

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = None
    intermediate_size: int = Field(128, ge=8)
    max_position_embeddings: int = Field(1024, ge=64)
    tokenizer_vocab_size: int = Field(600, ge=260, description="byte-level BPE size before special tokens")
    # One matrix for input embeddings and output logits: a small LLM trained from scratch learns to copy words
    # from the prompt (category names into its answer) far sooner when reading and writing share embeddings.
    tie_word_embeddings: bool = False
    # Uncased reading: the processor lower-cases instructions before tokenising, so "Describe the image.",
    # "describe the image." and "DESCRIBE THE IMAGE." are one input. Answers keep their case.
    lowercase_instructions: bool = False


class VocabConfig(StrictModel):
    location_bins: int = Field(1000, ge=2, description="B: <loc_0> ... <loc_{B-1}>")
    class_slots: int = Field(16, ge=1, description="K: <cls_0> ... <cls_{K-1}>")


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class RegionConfig(StrictModel):
    enabled: bool = True
    max_points: int = Field(256, ge=1, description="points sampled inside a mask for pooling")


class FormatQueryConfig(StrictModel):
    """Output-format-as-query parallel decoding of native boxes (VisionLLM v1, section 3.3; mllm.format_queries).

    Present: the model holds `slots` learned format queries (one per object slot; each slot is five
    positions, class + x1 y1 x2 y2), decodes a native-detection answer from them in one forward pass, and
    trains them with a set-matching (Hungarian) loss. Absent (the default): boxes are decoded token by token.
    """

    slots: int = Field(16, ge=1, description="object slots predicted in parallel (the most boxes one answer holds)")
    loss_weight: float = Field(1.0, ge=0.0, description="weight of the set loss in the joint loss")
    no_object_weight: float = Field(0.1, ge=0.0, description="class-CE weight of slots matched to no object (DETR's eos_coef)")
    l1_weight: float = Field(5.0, ge=0.0, description="weight of the L1 between expected and target coordinates")


class ImageTokenizerConfig(StrictModel):
    """Language-guided image tokenizer (VisionLLM v1, section 3.2; mllm.image_tokenizer).

    Present: learned queries, shifted by the pooled embedding of the instruction, cross-attend to the
    projected patch features; their outputs are the visual tokens ("replace"), or are added to the
    patch tokens through a zero-initialised gate ("add", so a trained model starts unchanged).
    """

    num_queries: int | None = Field(None, ge=1, description="visual tokens per image; None: one per patch")
    num_layers: int = Field(1, ge=1)
    num_heads: int | None = Field(None, ge=1, description="None: the LLM's number of heads")
    combine: Literal["add", "replace"] = "add"


class DenseProbeConfig(StrictModel):
    """Dense supervision of the image tokens (a from-scratch vision tower's shortcut to informative patches).

    Present: a linear head reads every projected patch feature (the LLM's image tokens before any image
    tokenizer) and is trained, with a binary cross-entropy, on per-patch label coverage that the data source
    provides (`scene.dense_labels()`: ShapesWorld gives kind and colour coverage and object centres). Rows
    whose sample has no dense labels (COCO, LLaVA, pure text) add nothing. Absent (the default): no head.
    """

    labels: int = Field(ge=1, description="label channels per patch; must match the data's dense labels")
    weight: float = Field(1.0, ge=0.0, description="weight of the probe loss in the joint loss")


class MLLMConfig(StrictModel):
    """The multimodal LLM. `pretrained` points at a local LLaVA-format folder (real scale)."""

    pretrained: str | None = None
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    vocab: VocabConfig = VocabConfig()
    # Route token -> number of super-link queries. Declared once; see mllm.vocab.
    routes: dict[str, int] = {"DET": 4, "SEG": 4, "GRD": 4, "POSE": 4, "GEN": 64, "EDIT": 64}
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    max_prompt_tokens: int = Field(512, ge=16)
    region: RegionConfig = RegionConfig()
    lora: LoraConfig | None = None
    projector: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    # LayerNorm on the vision tower's patch features before the projector (InternVL's `mlp1`, which VisionLLM v2
    # builds on). A tower trained from scratch grows its residual stream (patch norms ~870 in the 9 300-step
    # `shapes` model): unnormalised, the projected patches reach the LLM ~10^4 x the text embeddings' norm and
    # 98% alike (bench/image_reliance.py; EVAL.md). With it, the image tokens do not depend on the tower's
    # scale. Off: LLaVA's layout.
    projector_norm: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # VisionLLM v1 options, off by default (a config without them builds and loads exactly as before).
    format_queries: FormatQueryConfig | None = None
    image_tokenizer: ImageTokenizerConfig | None = None
    dense_probe: DenseProbeConfig | None = None

    @model_validator(mode="after")
    def _check_routes(self) -> MLLMConfig:
        for name, q in self.routes.items():
            if not name.isupper() or not name.isalpha():
                raise ValueError(f"route name {name!r} must be upper-case letters, e.g. 'DET'")
            if q < 1:
                raise ValueError(f"route {name} needs at least one query, got {q}")
        tok = self.image_tokenizer
        if tok is not None and tok.combine == "add" and tok.num_queries not in (None, self.vision.num_patches):
            raise ValueError(
                f"image_tokenizer.combine 'add' needs one query per patch ({self.vision.num_patches}), got "
                f"num_queries {tok.num_queries}; use combine 'replace' for another count"
            )
        return self

    @property
    def num_image_tokens(self) -> int:
        """Tokens each <image> expands to: one per patch, or the image tokenizer's query count."""
        tok = self.image_tokenizer
        if tok is not None and tok.combine == "replace" and tok.num_queries is not None:
            return tok.num_queries
        return self.vision.num_patches
