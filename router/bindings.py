"""The trainable system and the running of one route: routes (router.routes) bound to decoders.

Adding a task is one route module (a `RouteSpec` registered in router.routes), one decoder module (a kind
registered in decoders.registry) and config lines (`model.routes` and a `decoders:` entry). This module holds
what every route shares: the system (MLLM + one projector per route + decoders by name) and `run_route`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from decoders.base import Decoder
from decoders.registry import decoder_kind
from router.config import SuperLinkConfig
from router.projectors import (
    PROJECTORS,
    ProjectorFactory,
    SkipProjector,
    generation_projector,
    perception_projector,
)
from router.routes import BUILTIN_ROUTES, ROUTES, RouteSpec
from router.routes.common import (  # noqa: F401  (re-exported: scripts import them from here)
    detector_batch,
    detector_items,
    detector_train_batch,
    editor_batch,
    editor_train_batch,
    generator_batch,
    generator_train_batch,
    image_items,
    keypoint_items,
    target_texts,
)
from router.schemas import Item
from router.stages import DecoderCall, DecoderResult, failed

__all__ = ["PROJECTORS", "ProjectorFactory", "SkipProjector", "generation_projector", "perception_projector"]

RouteBinding = RouteSpec  # the older name of a route's row
DecoderBuilder = Callable[[SuperLinkConfig], Decoder]


BindingTable = Mapping[str, RouteBinding]


def check_table(
    table: BindingTable, routes: Sequence[str], decoders: Mapping[str, object]
) -> None:
    """Every binding names a declared route and a known decoder; fail loudly otherwise."""
    for name, b in table.items():
        if name != b.route:
            raise ValueError(f"binding table key {name!r} differs from its row's route {b.route!r}")
        if b.route not in routes:
            raise ValueError(
                f"route {b.route!r} is bound but not declared in model.routes {list(routes)}; "
                "declare it in the model config first"
            )
        if b.decoder not in decoders:
            raise ValueError(
                f"route {b.route!r} is bound to decoder {b.decoder!r}, which has no builder; "
                f"known decoders: {sorted(decoders)}"
            )


class SuperLinkSystem(nn.Module):
    """The trainable whole: MLLM + one projector per bound route + the decoders.

    Attribute names are checkpoint keys: `model.*`, `projectors.<ROUTE>.*`, `decoders.<name>.*`.
    `model` may be None for a decoder-only process (a Ray Serve decoder replica).
    """

    def __init__(
        self, model: nn.Module | None, decoders: Mapping[str, Decoder], table: BindingTable, llm_hidden: int
    ) -> None:
        super().__init__()
        self.model = model
        self.decoders = nn.ModuleDict(dict(decoders))
        self.table = dict(table)
        self.projectors = nn.ModuleDict(
            {
                route: b.projector(llm_hidden, int(self.decoders[b.decoder].link_dim))
                for route, b in self.table.items()
                if b.decoder in self.decoders
            }
        )

    @property
    def deployed_routes(self) -> list[str]:
        return list(self.projectors.keys())

    def binding(self, route: str) -> RouteBinding:
        if route not in self.table:
            raise KeyError(f"route {route!r} has no binding; bound routes: {sorted(self.table)}")
        return self.table[route]

    def decoder_for(self, route: str) -> Decoder:
        name = self.binding(route).decoder
        if name not in self.decoders:
            raise KeyError(f"decoder {name!r} for route {route!r} is not loaded here; loaded: {list(self.decoders)}")
        return self.decoders[name]

    def project(self, route: str, states: torch.Tensor) -> torch.Tensor:
        """(N, Q, D) LLM link states -> (N, Q, C) in the route's decoder width."""
        if route not in self.projectors:
            raise KeyError(f"route {route!r} is not deployed here; deployed: {self.deployed_routes}")
        return self.projectors[route](states)


def run_route(system: SuperLinkSystem, route: str, calls: Sequence[DecoderCall]) -> list[DecoderResult]:
    """Project the calls' link states, run the route's decoder once, map predictions back to calls.

    Any failure becomes a PartError on every call of this route; other routes are unaffected.
    """
    if route not in system.table or system.table[route].decoder not in system.decoders:
        msg = f"route {route!r} has no decoder deployed here; deployed routes: {system.deployed_routes}"
        return [failed(c, "route_not_deployed", msg) for c in calls]
    binding = system.table[route]
    decoder = system.decoders[binding.decoder]
    try:
        device = next(system.projectors[route].parameters()).device
        states = torch.from_numpy(np.stack([c.states for c in calls])).float().to(device)  # (N, Q, D)
        batch, owners = binding.build_batch(calls, system.project(route, states), decoder)
        predictions = decoder(batch).predictions
        items: list[list[Item]] = [[] for _ in calls]
        for pred, own in zip(predictions, owners, strict=True):
            for i, its in zip(own, binding.to_items(pred, [calls[i] for i in own], decoder), strict=True):
                items[i].extend(its)
    except Exception as err:  # a failing decoder must not take the response down
        msg = f"{binding.decoder} failed on {route}: {type(err).__name__}: {err}"
        return [failed(c, "decoder_failed", msg) for c in calls]
    return [DecoderResult(c.request, c.event, c.route, c.phrase, items=items[i], noun=binding.noun) for i, c in enumerate(calls)]


# ---- decoders, built from the `decoders:` entries by name (decoders.registry) --------------------------
def build_decoder(cfg: SuperLinkConfig, name: str) -> Decoder:
    """The decoder of the `decoders:` entry `name`, built by its kind's builder."""
    kind = decoder_kind(cfg.decoders.kind_of(name))
    return kind.build(cfg.decoders[name], cfg.decoders.sections())


def build_detector(cfg: SuperLinkConfig) -> Decoder:
    return build_decoder(cfg, "detector")


def build_keypoints(cfg: SuperLinkConfig) -> Decoder:
    """The [POSE] decoder with its own detector (loaded from detector.pretrained when set). With
    keypoints.share_detector the detector is a placeholder until `share_decoders` gives it the real one."""
    return build_decoder(cfg, "keypoints")


def build_generator(cfg: SuperLinkConfig) -> Decoder:
    return build_decoder(cfg, "generator")


def build_editor(cfg: SuperLinkConfig) -> Decoder:
    return build_decoder(cfg, "editor")


def share_decoders(cfg: SuperLinkConfig, decoders: dict[str, Decoder]) -> None:
    """keypoints.share_detector: [POSE] runs on the very detector [DET] runs on (one set of weights in-process);
    a process holding only the keypoint decoder (a Ray replica) loads its own copy of detector.pretrained."""
    if not cfg.decoders.keypoints.share_detector or "keypoints" not in decoders:
        return
    if "detector" in decoders:
        decoders["keypoints"].detector = decoders["detector"]
    elif cfg.decoders.detector.pretrained:
        decoders["keypoints"].detector = build_detector(cfg)


DecoderLoader = Callable[[Path], Decoder]


def config_decoder_builders(cfg: SuperLinkConfig) -> dict[str, DecoderBuilder]:
    """A builder for every `decoders:` entry of `cfg`, by name."""
    return {name: functools.partial(build_decoder, name=name) for name in cfg.decoders.names()}


def decoder_loaders(cfg: SuperLinkConfig) -> dict[str, DecoderLoader]:
    """Decoder name -> loader of the folder its save_pretrained wrote (a self-contained saved system)."""
    kinds = {name: decoder_kind(cfg.decoders.kind_of(name)) for name in cfg.decoders.names()}
    return {name: k.load for name, k in kinds.items() if k.load is not None}


def pretrained_decoders(cfg: SuperLinkConfig, names: Sequence[str]) -> list[str]:
    """Those of `names` built from a `pretrained` folder (keypoints: from the detector's)."""
    sections = cfg.decoders.sections()
    out = []
    for n in names:
        kind = decoder_kind(cfg.decoders.kind_of(n)) if n in sections else None
        if kind is not None and kind.pretrained is not None and kind.pretrained(sections[n], sections):
            out.append(n)
    return out


# ---- the table ---------------------------------------------------------------------------------
def default_decoder_builders() -> dict[str, DecoderBuilder]:
    """Builders of the built-in decoders (config_decoder_builders covers a config's own entries too)."""
    return {"detector": build_detector, "keypoints": build_keypoints, "generator": build_generator, "editor": build_editor}


def default_bindings() -> dict[str, RouteSpec]:
    """The built-in route table: one row per built-in route (router.routes)."""
    return {r: ROUTES[r] for r in BUILTIN_ROUTES}
