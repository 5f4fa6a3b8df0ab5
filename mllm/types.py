"""Data passed between the MLLM and the router."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LinkEvent:
    """One routing token fired during generation (or found in a teacher-forced answer).

    states: (Q, D) last-layer hidden states at the route's query positions.
    """

    route: str  # "DET"
    row: int  # batch row the event belongs to
    position: int  # index of the routing token in that row's generated ids
    states: torch.Tensor  # (Q, D)
    phrase: str  # the phrase the routing token refers to ("red circles")


@dataclass
class Generation:
    """What batched routed generation returns for one row."""

    text: str  # decoded answer, routing tokens kept, query placeholders dropped
    token_ids: list[int]  # generated ids (queries excluded)
    links: list[LinkEvent] = field(default_factory=list)
    finished: bool = True  # False when max_new_tokens ran out first


@dataclass
class LinkStates:
    """Teacher-forced link states for one route, gathered by mask.

    states: (N, Q, D); index: (N, 2) long, each row (batch row, routing-token position).
    """

    states: torch.Tensor
    index: torch.Tensor
