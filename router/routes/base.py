"""What a route is, and the one table of routes.

A route module declares everything specific to its route in one `RouteSpec` and registers it:

    SPEC = register_route(RouteSpec("COUNT", "counter", perception_projector, count_batch, count_items,
                                    count_train_batch, item_type=Count, noun="count"))

The model config declares the route's token and query count (`model.routes`); the decoder named here is built
from the `decoders:` entry of that name (decoders.registry). Nothing else in the package lists routes.

A spec says, for its route:
  decoder      the `decoders:` entry that runs it ("detector", "keypoints", "generator", "editor", ...)
  projector    factory (llm_hidden, link_dim) -> module mapping each link state to the decoder width
  build_batch  (calls, projected (N, Q, C), decoder) -> (decoder batch, owners): owners[i] lists the
               positions in `calls` that prediction i answers
  to_items     (prediction, owner calls, decoder) -> items per owner call (Response items of `item_type`)
  train_batch  (projected (N, Q, C), rows, targets, images, decoder) -> (decoder batch, decoder targets)
               for the joint loss: group n belongs to batch row rows[n] and answers targets[n]
               (a RouteTarget); images[r] is row r's input image. None: no training path
  item_type    the Response item class to_items returns (its `kind` tags it in Response.parts)
  noun         what Response.text calls one result ("2 detections")
  evaluate     optional hook (scored samples) -> {metric: value} that evaluation.suite reports for the route
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decoders.base import Decoder
from router.projectors import ProjectorFactory
from router.schemas import Item
from router.stages import DecoderCall

# What a route's callables get: its decoder (decoders.base.Decoder), the link states projected to its width,
# and the route's calls or training targets; batches, predictions and targets are the decoder's own types.
BuildBatch = Callable[[Sequence[DecoderCall], torch.Tensor, Decoder], tuple[Any, list[list[int]]]]
ToItems = Callable[[Any, Sequence[DecoderCall], Decoder], list[list[Item]]]
TrainBatch = Callable[[torch.Tensor, Sequence[int], Sequence[Any], Sequence[Any], Decoder], tuple[Any, Any]]
EvaluateHook = Callable[[Sequence[Any]], dict[str, float]]


@dataclass(frozen=True)
class RouteSpec:
    route: str
    decoder: str
    projector: ProjectorFactory
    build_batch: BuildBatch
    to_items: ToItems
    train_batch: TrainBatch | None = None
    item_type: type[Item] = Item
    noun: str = "result"
    evaluate: EvaluateHook | None = None


# Route name -> spec. The built-in routes register on `import router.routes`; a route declared outside the
# package registers when its module is imported (list it under `modules:` in the system config so every
# process that loads the config imports it, Ray replicas included).
ROUTES: dict[str, RouteSpec] = {}


def register_route(spec: RouteSpec) -> RouteSpec:
    """Add `spec` to the route table; registering the same route twice with a different spec is an error."""
    if not (spec.route.isupper() and spec.route.isalpha()):
        raise ValueError(f"route name {spec.route!r} must be upper-case letters, e.g. 'DET'")
    old = ROUTES.get(spec.route)
    if old is not None and old != spec:
        raise ValueError(
            f"route {spec.route!r} is already registered (decoder {old.decoder!r}); pick another name"
        )
    ROUTES[spec.route] = spec
    return spec


def route_spec(route: str) -> RouteSpec:
    if route not in ROUTES:
        raise KeyError(f"route {route!r} is not registered; registered routes: {sorted(ROUTES)}")
    return ROUTES[route]


def route_decoders(routes: Sequence[str], table: Mapping[str, RouteSpec] | None = None) -> dict[str, str]:
    """Route -> decoder name for `routes`, from `table` (default: the registered routes)."""
    table = ROUTES if table is None else table
    unknown = [r for r in routes if r not in table]
    if unknown:
        raise ValueError(f"routes {unknown} are not registered; registered routes: {sorted(table)}")
    return {r: table[r].decoder for r in routes}
