"""The one protocol every decoder satisfies.

A decoder takes link states already projected to its own width by the route's
projector (the projector belongs to the route binding in `router/`), plus its own
inputs (images at the decoder's resolution, generation options), and returns a
typed output holding predictions per batch item and, when targets are given, a loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


class DecoderInputError(ValueError):
    """Bad input to a decoder; the message says what was wrong and what is accepted."""


@dataclass
class DecoderOutput:
    """predictions[i] holds the typed predictions for batch item i; loss is set when targets were given."""

    predictions: list[Any]
    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # named parts of `loss`, for logging


@runtime_checkable
class Decoder(Protocol):
    link_dim: int  # width the route's projector must produce

    def __call__(self, batch: Any, targets: Any | None = None) -> DecoderOutput: ...


def check_link_states(states: torch.Tensor, name: str, link_dim: int) -> None:
    """Link states (..., Q, link_dim): finite, right width."""
    if not isinstance(states, torch.Tensor):
        raise DecoderInputError(f"{name}: expected a tensor, got {type(states).__name__}")
    if states.dim() < 2 or states.shape[-1] != link_dim:
        raise DecoderInputError(
            f"{name}: expected shape (..., num_queries, {link_dim}), got {tuple(states.shape)}"
        )
    if not torch.isfinite(states).all():
        raise DecoderInputError(f"{name}: link states contain NaN or inf")
