"""The whole-system configuration: model + decoders + training, one YAML preset per file in configs/."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from decoders.config import DecodersConfig
from mllm.config import MLLMConfig, StrictModel, load_yaml
from mllm.devices import DtypeName
from router.assets import SYSTEM_CONFIG, config_dir, shipped_checkpoint

PARAM_GROUPS = ("queries", "projectors", "decoders", "llm", "region")
CONFIG_DIR = config_dir()  # configs/ of the checkout, or the copy a wheel carries (router/assets.py)


class StageConfig(StrictModel):
    """One training stage: what trains, and at which learning rate per parameter group."""

    name: str
    steps: int = Field(ge=1)
    train_llm: Literal["frozen", "lora", "full"] = "frozen"
    # The vision tower is frozen by default (VisionLLM v2 keeps its pretrained CLIP frozen); a model trained
    # from scratch, like the embedded `shapes` preset, must train it or its patch features stay random.
    train_vision: bool = False
    # False: the stage trains on the LM loss alone and skips the decoders (several times faster per step), e.g. a
    # first stage that teaches a from-scratch LLM to answer, route and copy phrases before the decoders join in.
    decoder_losses: bool = True
    # False: the LM loss is left out of the total (still logged). With decoder_losses false too, only the
    # auxiliary losses train, e.g. a first stage that trains a from-scratch vision tower on model.dense_probe
    # alone before the tower is frozen for the stages that teach the LLM to read it (bench/vqa_learning.py).
    lm_loss: bool = True
    # Learning rate per parameter group (PARAM_GROUPS); a group left out, or at 0, does not train.
    lr: dict[str, float] = {"queries": 1e-3, "projectors": 1e-3, "decoders": 1e-3, "llm": 1e-4, "region": 1e-3}
    warmup_steps: int = Field(0, ge=0, description="linear warm-up at the start of the stage")
    # "cosine": after the warm-up the rates fall along a half cosine to final_lr_scale x their value at the
    # stage's last step (an annealed end, e.g. for a decoder stage that settles); "constant": they stay.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    final_lr_scale: float = Field(0.05, ge=0.0, le=1.0)
    # "text": the diffusion decoders ([GEN], [EDIT]) train on the frozen text encoder's embedding of each
    # target's description instead of the mapped link states (decoder pre-training, as VisionLLM v2's UNet was
    # trained on CLIP text before its links were aligned to it); "link": the usual end-to-end path.
    decoder_conditioning: Literal["link", "text"] = "link"
    # False: the image connector (the LLaVA projector, model.projector_norm, model.image_tokenizer) stays frozen
    # although the projectors group trains: with the LLM frozen too, the LLM's inputs and so its answers and
    # link states stay fixed while the decoders and link projectors fit them (VisionLLM v2's decoder stage).
    train_connector: bool = True
    # This stage's ShapesWorld task weights, in place of training.task_weights (a source's own task_weights
    # still win); None: training.task_weights. E.g. a decoder stage drawing only the decoder tasks.
    task_weights: dict[str, float] | None = None
    # This stage's micro-batches per optimizer step, in place of training.grad_accum; None: training.grad_accum.
    # E.g. an LM-only stage at a large effective batch (the LLM learns the read-off VQA types at batch 256 and
    # nothing at batch 64 on as many questions; EVAL.md "Batch size") beside decoder stages at batch_size.
    grad_accum: int | None = Field(None, ge=1)

    @field_validator("lr")
    @classmethod
    def _known_groups(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"unknown parameter groups {sorted(unknown)}; accepted: {list(PARAM_GROUPS)}")
        return v


# ---- training data sources (router/sources.py reads them) ------------------------------------------
class ShapesWorldSource(StrictModel):
    """Generated ShapesWorld scenes (training.image_size, training.wording)."""

    kind: Literal["shapesworld"]
    weight: float = Field(1.0, ge=0.0, description="share of the batch rows drawn from this source")
    name: str | None = Field(None, description="label in the training log (data/<name>); default: the kind, "
                             "numbered when several sources share it")
    # ShapesWorld task -> sampling weight; None: training.task_weights (all tasks equally when that is empty).
    task_weights: dict[str, float] | None = None


class CocoSource(StrictModel):
    """COCO instances / person_keypoints JSON: one sample per image listing the categories present."""

    kind: Literal["coco"]
    weight: float = Field(1.0, ge=0.0)
    name: str | None = None
    annotations: Path = Field(description="instances_*.json or person_keypoints_*.json")
    images: Path = Field(description="folder the images' file_name entries are read from")
    tasks: list[Literal["detection", "segmentation", "keypoints"]] = Field(["detection"], min_length=1)


class RefCocoSource(StrictModel):
    """RefCOCO-style referring expressions (refs JSON with ann_id + sentences, over a COCO instances JSON)."""

    kind: Literal["refcoco"]
    weight: float = Field(1.0, ge=0.0)
    name: str | None = None
    refs: Path = Field(description="refs JSON: a list of {ann_id, sentences, split}")
    annotations: Path = Field(description="the COCO instances JSON the refs' ann_ids point into")
    images: Path
    split: str | None = Field(None, description="keep only refs of this split (e.g. train)")


class LlavaSource(StrictModel):
    """LLaVA-style conversations (a JSON list or JSONL): one caption / VQA sample per turn."""

    kind: Literal["llava"]
    weight: float = Field(1.0, ge=0.0)
    name: str | None = None
    conversations: Path = Field(description="LLaVA conversations, .json (a list) or .jsonl")
    images: Path | None = Field(None, description="image root; default: the conversations file's folder")
    tasks: list[Literal["caption", "vqa"]] | None = Field(None, description="keep only these turns; None: all")


DataSource = Annotated[ShapesWorldSource | CocoSource | RefCocoSource | LlavaSource, Field(discriminator="kind")]
DEFAULT_DATA: tuple[DataSource, ...] = (ShapesWorldSource(kind="shapesworld"),)


class TrainingConfig(StrictModel):
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # How a multi-process run (torchrun, WORLD_SIZE > 1) splits the work (training.parallel): "ddp" keeps a whole
    # replica per rank (DistributedDataParallel); "fsdp" shards the LLM's weights, gradients and optimizer state
    # over the ranks (torch FSDP2 fully_shard) from the first stage that trains it, for 7B-scale full or LoRA
    # fine-tuning; the decoders, projectors and query tables stay replicated. A run outside torchrun ignores it.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    stages: list[StageConfig] = [StageConfig(name="stage1", steps=100)]
    task_weights: dict[str, float] = {}  # ShapesWorld task -> sampling weight
    # Where batch rows come from and in which shares (router/sources.py); relative paths are read from the
    # working directory. The default is ShapesWorld alone with task_weights, as before this section existed.
    data: list[DataSource] = Field(default_factory=lambda: list(DEFAULT_DATA), min_length=1)
    loss_weights: dict[str, float] = {}  # route -> decoder loss weight (default 1.0)
    eval_every: int = Field(0, ge=0)
    save_every: int = Field(0, ge=0)
    image_size: int = Field(128, ge=16, description="ShapesWorld scene size used for training")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    eval_samples: int = Field(4, ge=1, description="val samples per task scored at each evaluation")
    log_every: int = Field(1, ge=1)
    wording: Literal["train", "template", "noisy", "noisy_mixed"] = Field(
        "train",
        description="instruction wording of training samples: the grammar's training part (shapesworld.grammar; "
        "its held-out part is for evaluation only), the fixed template lists, 'noisy': the training part "
        "with pseudo-word fillers that ask for nothing, or 'noisy_mixed': longer fillers that mix in neutral "
        "function words of the training part",
    )
    subword_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="subword regularisation of training prompts (mllm.tokenizer.resegment): each BPE token of a "
        "prompt is split at a random inner character with this probability and its parts re-tokenized, so the "
        "model meets the pieces of misspelt and unknown words; answers and inference keep the usual tokens",
    )

    @field_validator("data")
    @classmethod
    def _some_weight(cls, v: list[DataSource]) -> list[DataSource]:
        if sum(s.weight for s in v) <= 0:
            raise ValueError("training.data: every source has weight 0; give at least one a positive weight")
        names = [s.name for s in v if s.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"training.data: source names {dup} appear more than once; each name must be distinct")
        return v


class RuntimeConfig(StrictModel):
    """In-process pipeline: how independent decoder calls run side by side.

    "thread": a thread pool (cheap; parallel only where torch ops dominate, since Python holds the GIL).
    "process": forked worker processes holding the decoders (truly parallel on CPU for small, Python-bound
    decoders; the workers keep the weights as they were when first used, so use it for serving, not training).
    """

    decoder_concurrency: Literal["thread", "process"] = "thread"
    decoder_workers: int = Field(4, ge=1, description="threads or processes running independent decoder calls")
    torch_threads_per_decoder: int | None = Field(
        None, ge=1, description="torch intra-op threads per decoder worker; None: cpu_count // decoders in flight"
    )


def import_modules(data: Any) -> Any:
    """Import the modules a config lists under `modules:` (they register routes and decoder kinds declared
    outside the package), before its `decoders:` entries are validated against the registered kinds."""
    if isinstance(data, dict):
        for name in data.get("modules") or []:
            try:
                importlib.import_module(name)
            except ImportError as err:
                raise ValueError(f"modules: cannot import {name!r}: {err}") from None
    return data


class SuperLinkConfig(StrictModel):
    name: str
    # Modules imported before the rest of the config is read: each registers its routes (router.routes) and
    # decoder kinds (decoders.registry), so a route declared outside the package is one import away everywhere
    # the config loads (training, a saved model, every Ray replica).
    modules: list[str] = []
    # The projector of the perception routes ([DET] [SEG] [GRD] [POSE]), by name (router.bindings.PROJECTORS):
    # "relu_mlp" is VisionLLM v2's patch2query; "skip_mlp" adds a linear path that keeps phrases apart.
    link_projector: Literal["relu_mlp", "skip_mlp"] = "relu_mlp"
    model: MLLMConfig = MLLMConfig()
    decoders: DecodersConfig = DecodersConfig()
    training: TrainingConfig = TrainingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    # Where the whole pipeline runs (mllm.devices): "auto" is this process's GPU when it has one, else the CPU;
    # dtype "auto" is bf16 (fp16 without bf16) on a GPU and leaves CPU weights as built. Serving sets them per
    # deployment (configs/serve.yaml).
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: DtypeName = Field("auto", description="auto or float32, bfloat16, float16")

    @model_validator(mode="before")
    @classmethod
    def _import_modules(cls, data: Any) -> Any:
        return import_modules(data)

    @model_validator(mode="after")
    def _every_stage_has_a_loss(self) -> SuperLinkConfig:
        for stage in self.training.stages:
            if not stage.lm_loss and not stage.decoder_losses and self.model.dense_probe is None \
                    and self.model.format_queries is None:
                raise ValueError(
                    f"training stage {stage.name!r} has lm_loss and decoder_losses false and the model has no "
                    "auxiliary loss (model.dense_probe or model.format_queries): it would train nothing; "
                    "turn one of them on"
                )
        return self


def load_config(preset_or_path: str | Path) -> SuperLinkConfig:
    """A preset name from configs/ ("tiny") or a path to a YAML file."""
    p = Path(preset_or_path)
    if not p.suffix and not p.exists():
        p = config_dir() / f"{preset_or_path}.yaml"
    return load_yaml(p, SuperLinkConfig)


def with_overrides(cfg: SuperLinkConfig, overrides: Sequence[str]) -> SuperLinkConfig:
    """`cfg` with dotted `KEY=VALUE` settings applied (VALUE read as YAML), validated again:
    ["decoders.generator.block_out_channels=[64, 128]", "training.batch_size=16"]."""
    data = cfg.model_dump()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r}: expected KEY=VALUE with a dotted KEY, e.g. training.batch_size=16")
        *parents, leaf = key.strip().split(".")
        node = data
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section of the config")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"override {item!r}: unknown key {leaf!r}; accepted here: {', '.join(sorted(node))}")
        node[leaf] = yaml.safe_load(raw)
    return SuperLinkConfig.model_validate(data)


def model_config_of(preset_or_dir: str | Path) -> SuperLinkConfig:
    """The system config `Pipeline.from_pretrained(preset_or_dir)` would use, without building anything."""
    path = Path(preset_or_dir)
    if not path.is_dir():
        path = shipped_checkpoint(str(preset_or_dir)) or path
    return load_config(path / SYSTEM_CONFIG) if path.is_dir() else load_config(preset_or_dir)
