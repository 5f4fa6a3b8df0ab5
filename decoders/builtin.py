"""The built-in decoder kinds (decoders.registry): detector, keypoints, generator, editor.

The heavy modules (transformers, diffusers) are imported when a decoder is built, not when configs load.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from decoders.base import Decoder
from decoders.config import DetectorConfig, DiffusionConfig, EditorConfig, KeypointConfig
from decoders.registry import DecoderKind, register_decoder_kind


def build_detector(c: DetectorConfig, sections: Mapping[str, Any]) -> Decoder:
    from decoders.detection import DetectionDecoder

    return DetectionDecoder.from_pretrained(c.pretrained, c) if c.pretrained else DetectionDecoder(c)


def build_keypoints(c: KeypointConfig, sections: Mapping[str, Any]) -> Decoder:
    """The [POSE] decoder with its own detector (the `detector` entry's, loaded from its pretrained folder when
    set). With share_detector the detector is a placeholder until the system gives it the real one."""
    from decoders.detection import DetectionDecoder
    from decoders.keypoints import KeypointDecoder

    det: DetectorConfig = sections["detector"]
    if c.share_detector and det.pretrained:
        return KeypointDecoder(c, DetectionDecoder(det.model_copy(update={"pretrained": None})))
    return KeypointDecoder.build(c, det)


def build_generator(c: DiffusionConfig, sections: Mapping[str, Any]) -> Decoder:
    from decoders.diffusion import GenerationDecoder

    return GenerationDecoder.from_pretrained_sd(c.pretrained, c) if c.pretrained else GenerationDecoder(c)


def build_editor(c: EditorConfig, sections: Mapping[str, Any]) -> Decoder:
    from decoders.diffusion import EditDecoder

    return EditDecoder.from_pretrained_ip2p(c.pretrained, c) if c.pretrained else EditDecoder(c)


def _load(module: str, cls: str):  # noqa: ANN202
    def load(path: Path) -> Decoder:
        return getattr(importlib.import_module(module), cls).from_pretrained(path)

    return load


def _own_folder(c: Any, sections: Mapping[str, Any]) -> str | None:
    return c.pretrained


def _detector_folder(c: Any, sections: Mapping[str, Any]) -> str | None:
    return sections["detector"].pretrained


for _kind in (
    DecoderKind("detector", DetectorConfig, build_detector, _load("decoders.detection", "DetectionDecoder"), _own_folder),
    DecoderKind("keypoints", KeypointConfig, build_keypoints, _load("decoders.keypoints", "KeypointDecoder"), _detector_folder),
    DecoderKind("generator", DiffusionConfig, build_generator, _load("decoders.diffusion", "GenerationDecoder"), _own_folder),
    DecoderKind("editor", EditorConfig, build_editor, _load("decoders.diffusion", "EditDecoder"), _own_folder),
):
    register_decoder_kind(_kind)
