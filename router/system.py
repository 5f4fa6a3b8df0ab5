"""A SuperLink system on disk and in memory: build from a config (random weights), save, load.

    system, processor = build_system(config)          # model + projectors + decoders, random weights
    save_system(config, system, processor, out_dir)   # superlink.yaml + mllm/ + heads.safetensors (+ decoders/)
    config, system, processor = load_system(out_dir)  # nothing is unpickled

router/pipeline.py wraps these in Pipeline.from_config / from_pretrained / save_pretrained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_model, save_model

from mllm.modeling import SuperLinkModel
from mllm.modeling import build_model as build_mllm
from mllm.processor import SuperLinkProcessor
from router.assets import SYSTEM_CONFIG
from router.bindings import (
    PROJECTORS,
    BindingTable,
    DecoderBuilder,
    SuperLinkSystem,
    check_table,
    config_decoder_builders,
    decoder_loaders,
    perception_projector,
    pretrained_decoders,
    share_decoders,
)
from router.config import SuperLinkConfig, load_config
from router.routes import ROUTES
from router.sources import data_tokenizer

MLLM_DIR = "mllm"
HEADS_FILE = "heads.safetensors"  # projectors.* and decoders.* (those not saved whole under decoders/)
DECODERS_DIR = "decoders"  # decoders/<name>/: a decoder loaded from a pretrained folder, saved in its own format


def build_model(config: SuperLinkConfig, tokenizer: Any = None) -> Any:
    """The MLLM with random weights (or from a LLaVA folder when model.pretrained is set).

    A model built from scratch uses `tokenizer` when given (e.g. the one a training run saved), else
    one trained on the texts of the config's data sources (router.sources.data_tokenizer), as a training
    run of this config would build it. Loading a saved system (`load_system`) uses the saved tokenizer.
    """
    if config.model.pretrained:
        tokenizer = None
    elif tokenizer is None:
        tokenizer = data_tokenizer(config)
    return build_mllm(config.model, tokenizer)


def _pick_decoders(
    config: SuperLinkConfig, table: BindingTable, builders: Mapping[str, DecoderBuilder], decoders: Sequence[str] | None
) -> dict[str, Any]:
    wanted = sorted({b.decoder for b in table.values()}) if decoders is None else list(decoders)
    unknown = [d for d in wanted if d not in builders]
    if unknown:
        raise ValueError(f"unknown decoders {unknown}; known: {sorted(builders)}")
    built = {name: builders[name](config) for name in wanted}
    share_decoders(config, built)
    return built


def route_table(
    config: SuperLinkConfig, bindings: BindingTable | None, decoder_builders: Mapping[str, DecoderBuilder] | None
) -> tuple[dict[str, Any], dict[str, DecoderBuilder]]:
    """The binding table and decoder builders to use; the built-in rows cover the routes the model declares."""
    if bindings is None:
        perception = PROJECTORS[config.link_projector]
        table = {
            r: replace(b, projector=perception) if b.projector is perception_projector else b
            for r, b in ROUTES.items()
            if r in config.model.routes
        }
    else:
        table = dict(bindings)
    builders = dict(config_decoder_builders(config) if decoder_builders is None else decoder_builders)
    check_table(table, list(config.model.routes), builders)
    return table, builders


def build_system(
    config: SuperLinkConfig,
    bindings: BindingTable | None = None,
    decoder_builders: Mapping[str, DecoderBuilder] | None = None,
    decoders: Sequence[str] | None = None,
    with_model: bool = True,
    tokenizer: Any = None,
) -> tuple[SuperLinkSystem, Any]:
    """Model + projectors + decoders from `config` (random weights), and the processor."""
    table, builders = route_table(config, bindings, decoder_builders)
    model = build_model(config, tokenizer) if with_model else None
    hidden = config.model.text.hidden_size if model is None else model.llava.config.text_config.hidden_size
    system = SuperLinkSystem(model, _pick_decoders(config, table, builders, decoders), table, hidden)
    processor = SuperLinkProcessor(model.tokenizer, model.config) if model is not None else None
    return system, processor


def save_system(
    config: SuperLinkConfig,
    system: SuperLinkSystem,
    processor: Any,
    out_dir: Path,
    model_weights: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None,
) -> Path:
    """superlink.yaml + mllm/ (model, tokenizer) + heads.safetensors (projectors and decoders).

    A decoder that was loaded from a `pretrained` folder is written whole to decoders/<name>/ in its own
    format instead (architecture included), and the saved config no longer names any pretrained folder:
    the saved folder is all a later load needs. model_weights: the MLLM's tensors and tied-name aliases
    gathered from a sharded run (keys without the `model.` prefix), written instead of its own parameters.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if system.model is not None:
        if model_weights is None:
            system.model.save_pretrained(out_dir / MLLM_DIR)
        else:
            system.model.save_pretrained(out_dir / MLLM_DIR, *model_weights)
        config = config.model_copy(update={"model": system.model.config})  # records LoRA if applied
    standalone = pretrained_decoders(config, list(system.decoders))
    for name in standalone:
        system.decoders[name].save_pretrained(out_dir / DECODERS_DIR / name)
    heads = _heads(system, standalone)
    save_model(heads, str(out_dir / HEADS_FILE))
    saved = without_pretrained(config)
    (out_dir / SYSTEM_CONFIG).write_text(yaml.safe_dump(saved.model_dump(mode="json"), sort_keys=False))
    return out_dir


def _heads(system: SuperLinkSystem, standalone: Sequence[str]) -> torch.nn.ModuleDict:
    """projectors.* and decoders.* of the decoders not saved on their own."""
    kept = {n: d for n, d in system.decoders.items() if n not in standalone}
    return torch.nn.ModuleDict({"projectors": system.projectors, "decoders": torch.nn.ModuleDict(kept)})


def without_pretrained(config: SuperLinkConfig) -> SuperLinkConfig:
    """`config` with every `pretrained` folder cleared (what a saved, self-contained system records)."""
    out = config.model_copy(deep=True)
    out.model.pretrained = None
    for section in out.decoders.sections().values():
        if getattr(section, "pretrained", None) is not None:  # the decoder kinds loaded from a folder
            section.pretrained = None
    return out


def load_system(
    path: Path,
    bindings: BindingTable | None = None,
    decoder_builders: Mapping[str, DecoderBuilder] | None = None,
    decoders: Sequence[str] | None = None,
    with_model: bool = True,
) -> tuple[SuperLinkConfig, SuperLinkSystem, Any]:
    """Load what save_system wrote; nothing is unpickled."""
    if not (path / SYSTEM_CONFIG).is_file():
        raise FileNotFoundError(f"{path}: {SYSTEM_CONFIG} missing; expected a folder written by Pipeline.save_pretrained")
    config = load_config(path / SYSTEM_CONFIG)
    table, builders = route_table(config, bindings, decoder_builders)
    model = SuperLinkModel.from_pretrained(path / MLLM_DIR) if with_model else None
    built = _load_decoders(path, config, table, builders, decoders)
    system = SuperLinkSystem(model, built, table, config.model.text.hidden_size)
    standalone = [n for n in built if (path / DECODERS_DIR / n).is_dir()]
    load_model(_heads(system, standalone), str(path / HEADS_FILE), strict=decoders is None)
    processor = SuperLinkProcessor(model.tokenizer, model.config) if model is not None else None
    return config, system, processor


def _load_decoders(
    path: Path, config: SuperLinkConfig, table: BindingTable, builders: Mapping[str, DecoderBuilder],
    decoders: Sequence[str] | None,
) -> dict[str, Any]:
    """Decoders saved whole under decoders/<name>/ load from there; the rest are built from the config."""
    wanted = sorted({b.decoder for b in table.values()}) if decoders is None else list(decoders)
    loaders = decoder_loaders(config)
    own = {n for n in wanted if (path / DECODERS_DIR / n).is_dir() and n in loaders}
    built = _pick_decoders(config, table, builders, [n for n in wanted if n not in own])
    built.update({n: loaders[n](path / DECODERS_DIR / n) for n in sorted(own)})
    share_decoders(config, built)
    return {n: built[n] for n in wanted}
