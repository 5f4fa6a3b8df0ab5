"""Decoder kinds by name: how the `decoders:` config entries become decoders.

A `decoders:` entry is a named decoder of some kind. The four built-in entries are named after their kinds
(`detector`, `keypoints`, `generator`, `editor`); any other entry says its kind (`counter: {kind: counter}`).
A decoder module outside the package registers its kind when imported:

    register_decoder_kind(DecoderKind("counter", CounterConfig, build=lambda cfg, all: CountDecoder(cfg)))

A kind holds its config class, a builder (own section, every section by name) -> decoder, and optionally a
loader of the folder its `save_pretrained` wrote and the `pretrained` folder a section loads its weights from
(such a decoder is saved whole under decoders/<name>/ of a saved system).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from decoders.base import Decoder

# Decoders are torch modules; the registry names them Any so configs load without importing torch.
Build = Callable[[Any, Mapping[str, Any]], Decoder]  # (own section, all sections by name) -> decoder
Load = Callable[[Path], Decoder]  # folder written by the decoder's save_pretrained -> decoder
PretrainedFolder = Callable[[Any, Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class DecoderKind:
    name: str
    config: type[BaseModel]
    build: Build
    load: Load | None = None
    pretrained: PretrainedFolder | None = None  # None: never loaded from a pretrained folder


DECODER_KINDS: dict[str, DecoderKind] = {}


def register_decoder_kind(kind: DecoderKind) -> DecoderKind:
    """Add `kind`; registering the same name twice with a different kind is an error."""
    old = DECODER_KINDS.get(kind.name)
    if old is not None and old != kind:
        raise ValueError(f"decoder kind {kind.name!r} is already registered; pick another name")
    DECODER_KINDS[kind.name] = kind
    return kind


def decoder_kind(name: str) -> DecoderKind:
    if name not in DECODER_KINDS:
        raise KeyError(
            f"unknown decoder kind {name!r}; registered kinds: {sorted(DECODER_KINDS)} (a decoder module outside "
            "the package registers its kind on import: list it under `modules:` in the config)"
        )
    return DECODER_KINDS[name]
