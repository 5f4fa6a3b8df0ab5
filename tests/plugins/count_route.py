"""A route declared outside the package: [COUNT] answers "how many" with a number from its own small decoder.

Everything the route needs is in this one module (the route module and the decoder module in one file, to keep
the test plugin small): its decoder kind and config, its response item type, its binding, its summary noun, its
evaluation hook and a sample builder for training. A system config enables it with config lines only:

    modules: [tests.plugins.count_route]
    model: {routes: {..., COUNT: 2}}
    decoders: {counter: {kind: counter}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from decoders.base import DecoderOutput, check_link_states
from decoders.registry import DecoderKind, register_decoder_kind
from mllm.config import StrictModel
from router.projectors import perception_projector
from router.routes import RouteSpec, register_route
from router.schemas import Item
from router.stages import DecoderCall
from shapesworld.scene import sample_scene
from shapesworld.tasks import RouteTarget, TaskSample

MODULE = __name__


# ---- the decoder ------------------------------------------------------------------------------------------
class CounterConfig(StrictModel):
    link_dim: int = Field(16, ge=1, description="width the [COUNT] projector maps link states to")
    hidden: int = Field(32, ge=1)


class CountDecoder(nn.Module):
    """Projected link states (N, Q, C) -> one count each (softplus of an MLP over the mean query)."""

    def __init__(self, config: CounterConfig) -> None:
        super().__init__()
        self.config = config
        self.link_dim = config.link_dim
        self.head = nn.Sequential(nn.Linear(config.link_dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))

    def forward(self, states: torch.Tensor, targets: torch.Tensor | None = None) -> DecoderOutput:
        check_link_states(states, "counter", self.link_dim)
        counts = nn.functional.softplus(self.head(states.mean(1)))[:, 0]  # (N,)
        loss = None if targets is None else nn.functional.mse_loss(counts, targets.to(counts))
        return DecoderOutput(predictions=[float(c) for c in counts.detach()], loss=loss)


register_decoder_kind(DecoderKind("counter", CounterConfig, build=lambda c, sections: CountDecoder(c)))


# ---- the route ---------------------------------------------------------------------------------------------
class Count(Item):
    kind: Literal["count"] = "count"
    label: str
    count: float = Field(description="how many objects the phrase names")


def count_batch(calls: Sequence[DecoderCall], projected: torch.Tensor, decoder: nn.Module) -> tuple[Any, list[list[int]]]:
    return projected, [[i] for i in range(len(calls))]  # one count per call


def count_items(prediction: float, calls: Sequence[DecoderCall], decoder: nn.Module) -> list[list[Item]]:
    (call,) = calls
    return [[Count(route=call.route, phrase=call.phrase, image=call.image_index or 0, label=call.phrase,
                   count=round(prediction, 3))]]  # fmt: skip


def count_train_batch(projected: torch.Tensor, rows: Sequence[int], targets: Sequence[Any], images: Sequence[Any],
                      decoder: nn.Module) -> tuple[Any, Any]:  # fmt: skip
    return projected, torch.tensor([float(len(t.boxes)) for t in targets])


def count_metrics(scored: Sequence[Any]) -> dict[str, float]:
    """Evaluation hook: mean absolute error of the first [COUNT] part against the sample's target count."""
    errors = [
        abs(next(p.count for p in s.response.parts if p.kind == "count") - len(s.sample.targets[0].boxes))
        for s in scored
        if any(t.route == "COUNT" for t in s.sample.targets) and any(p.kind == "count" for p in s.response.parts)
    ]
    return {"count_mae": float(np.mean(errors))} if errors else {}


SPEC = register_route(
    RouteSpec("COUNT", "counter", perception_projector, count_batch, count_items, count_train_batch,
              item_type=Count, noun="count", evaluate=count_metrics)  # fmt: skip
)


def count_sample(rng: np.random.Generator, image_size: int = 64) -> TaskSample:
    """A ShapesWorld scene asked "How many <kind>s?", answered "the <kind>s [COUNT]." with their boxes."""
    scene = sample_scene(rng, image_size)
    kind = scene.objects[int(rng.integers(len(scene.objects)))].kind
    boxes = np.stack([o.box for o in scene.objects if o.kind == kind]).astype(np.float32)
    phrase = f"the {kind}s"
    return TaskSample("count", scene.render(), f"<image>\nHow many {kind}s are there?", f"{phrase} [COUNT].",
                      [RouteTarget("COUNT", phrase, boxes)], scene=scene)  # fmt: skip
