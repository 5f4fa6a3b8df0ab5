"""Projectors: LLM link states (..., Q, D) -> the decoder width (..., Q, C). A route names its factory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ProjectorFactory = Callable[[int, int], nn.Module]


def perception_projector(llm_hidden: int, link_dim: int) -> nn.Module:
    """VisionLLM v2's patch2query: a 3-layer MLP (ReLU) applied to every link state."""
    return nn.Sequential(
        nn.Linear(llm_hidden, link_dim),
        nn.ReLU(),
        nn.Linear(link_dim, link_dim),
        nn.ReLU(),
        nn.Linear(link_dim, link_dim),
    )


class SkipProjector(nn.Module):
    """LayerNorm, a linear map to the decoder width, and a GELU MLP residual on top.

    The linear path keeps phrase link states as distinct as the LLM makes them. The ReLU MLP above feeds
    non-negative features into its last layer, so its outputs share one direction: at initialisation the
    projected phrase vectors already have a mean pairwise cosine of about 0.7 (bench/link_ablation.py).
    """

    def __init__(self, llm_hidden: int, link_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(llm_hidden)
        self.linear = nn.Linear(llm_hidden, link_dim)
        self.mlp = nn.Sequential(nn.Linear(link_dim, link_dim), nn.GELU(), nn.Linear(link_dim, link_dim))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h = self.linear(self.norm(states))  # (..., C)
        return h + self.mlp(h)


def generation_projector(llm_hidden: int, link_dim: int) -> nn.Module:
    """VisionLLM v2's emb_proj for [GEN]/[EDIT]: Linear-GELU-Linear (the decoder's mapper does the rest)."""
    return nn.Sequential(nn.Linear(llm_hidden, link_dim), nn.GELU(), nn.Linear(link_dim, link_dim))


# Perception projectors by name (`link_projector` in the system config); a route's own factory is used when
# the config names none.
PROJECTORS: dict[str, ProjectorFactory] = {"relu_mlp": perception_projector, "skip_mlp": SkipProjector}
