"""Adding a task is one route declaration, one binding row and one decoder: a [COUNT] route end to end."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from decoders.base import DecoderOutput, check_link_states
from router.bindings import RouteBinding, default_bindings, default_decoder_builders, perception_projector
from router.loss import collate, joint_loss
from router.pipeline import Pipeline, forced_answer_hook
from router.samples import RouteTarget, TaskSample
from router.schemas import Point, Request


class CountDecoder(nn.Module):
    """The new decoder: link vectors (B, Q, C) -> a count per item; loss = squared error to the target count."""

    link_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(self.link_dim, 1)

    def forward(self, states: torch.Tensor, targets: torch.Tensor | None = None) -> DecoderOutput:
        check_link_states(states, "COUNT", self.link_dim)
        counts = nn.functional.softplus(self.head(states.mean(1)))[:, 0]  # (B,)
        loss = None if targets is None else ((counts - targets) ** 2).mean()
        return DecoderOutput(predictions=counts.tolist(), loss=loss)


def count_batch(calls, projected, decoder):
    return projected, [[i] for i in range(len(calls))]


def count_items(pred, calls, decoder):
    return [[Point(route=c.route, phrase=c.phrase, label=f"{pred:.2f}", point=(pred, 0.0))] for c in calls]


def count_train_batch(projected, rows, targets, images, decoder):
    return projected, torch.tensor([float(len(t.boxes)) for t in targets])


# The one row; the declaration is `routes: {..., COUNT: 2}` in the model config; the decoder is above.
COUNT_ROW = RouteBinding("COUNT", "counter", perception_projector, count_batch, count_items, count_train_batch)


def test_count_route_end_to_end(tiny_config, scene_png):
    model = tiny_config.model.model_copy(update={"routes": {**tiny_config.model.routes, "COUNT": 2}})
    cfg = tiny_config.model_copy(update={"model": model})
    pipe = Pipeline.from_config(
        cfg,
        bindings={**default_bindings(), "COUNT": COUNT_ROW},
        decoder_builders={**default_decoder_builders(), "counter": lambda c: CountDecoder()},
        decoders=["counter"],
    )
    assert pipe.system.model.queries["COUNT"].weight.shape == (2, cfg.model.text.hidden_size)
    assert pipe.deployed_routes == ["COUNT"]
    pipe.logits_hook = forced_answer_hook(pipe.processor.tokenizer, ["Sure, the circles [COUNT]."])
    resp = pipe(Request(images=[scene_png], instruction="How many circles?", options={"routes": ["COUNT"]}))
    assert resp.routes == ["COUNT"] and resp.errors == []
    (item,) = resp.points
    assert item.route == "COUNT" and item.phrase == "circles" and item.point[0] > 0
    assert resp.text == "Sure, the circles (1 result)."

    # The same row trains: the count loss reaches the new query table.
    sample = TaskSample("count", np.zeros((128, 128, 3), np.uint8), "<image>\nHow many circles?",
                        "the circles [COUNT].", [RouteTarget("COUNT", "circles", np.zeros((3, 4), np.float32))])
    pipe.system.train()
    out = joint_loss(pipe.system, collate(pipe.processor, [sample]))
    out.parts["COUNT"].backward()
    assert pipe.system.model.queries["COUNT"].weight.grad.abs().sum() > 0
