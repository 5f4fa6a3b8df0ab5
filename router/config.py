"""The whole-system configuration: model + decoders + training, one YAML preset per file in configs/."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from decoders.config import DecodersConfig
from mllm.config import MLLMConfig, StrictModel, load_yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class StageConfig(StrictModel):
    """One training stage: what trains, and at which learning rate per parameter group."""

    name: str
    steps: int = Field(ge=1)
    train_llm: Literal["frozen", "lora", "full"] = "frozen"
    lr: dict[str, float] = {"queries": 1e-3, "projectors": 1e-3, "decoders": 1e-3, "llm": 1e-4}


class TrainingConfig(StrictModel):
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    stages: list[StageConfig] = [StageConfig(name="stage1", steps=100)]
    task_weights: dict[str, float] = {}  # ShapesWorld task -> sampling weight
    loss_weights: dict[str, float] = {}  # route -> decoder loss weight (default 1.0)
    eval_every: int = Field(0, ge=0)
    save_every: int = Field(0, ge=0)
    image_size: int = Field(128, ge=16, description="ShapesWorld scene size used for training")


class SuperLinkConfig(StrictModel):
    name: str
    model: MLLMConfig = MLLMConfig()
    decoders: DecodersConfig = DecodersConfig()
    training: TrainingConfig = TrainingConfig()


def load_config(preset_or_path: str | Path) -> SuperLinkConfig:
    """A preset name from configs/ ("tiny") or a path to a YAML file."""
    p = Path(preset_or_path)
    if not p.suffix and not p.exists():
        p = CONFIG_DIR / f"{preset_or_path}.yaml"
    return load_yaml(p, SuperLinkConfig)
