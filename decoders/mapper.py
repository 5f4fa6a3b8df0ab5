"""Link states -> prompt embeddings for the diffusion decoders ([GEN], [EDIT]).

VisionLLM v2 (`modeling_sd.py`) maps the hidden states after [GEN] through `emb_proj`
(Linear-GELU-Linear into the UNet's cross-attention width) and then an `nn.Transformer`
whose decoder reads a fixed set of learned queries, giving prompt embeddings of a fixed
length (77 for SD-1.5). A learned null embedding of the same shape stands in for the empty
prompt in classifier-free guidance.
"""

from __future__ import annotations

import torch
from torch import nn


class LinkMapper(nn.Module):
    """(B, Q, link_dim) link states -> (B, prompt_tokens, cross_attention_dim) prompt embeddings."""

    def __init__(
        self, link_dim: int, cross_attention_dim: int, prompt_tokens: int, num_heads: int = 4
    ) -> None:
        super().__init__()
        if cross_attention_dim % num_heads:
            raise ValueError(
                f"cross_attention_dim {cross_attention_dim} is not divisible by num_heads {num_heads}"
            )
        d = cross_attention_dim
        self.link_dim = link_dim
        self.prompt_tokens = prompt_tokens
        self.emb_proj = nn.Sequential(nn.Linear(link_dim, d), nn.GELU(), nn.Linear(d, d))
        # dropout 0: the overfit checks compare losses under fixed noise, so the mapper must be deterministic
        self.transformer = nn.Transformer(
            d_model=d,
            nhead=num_heads,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=4 * d,
            dropout=0.0,
            batch_first=True,
        )
        self.queries = nn.Parameter(torch.randn(1, prompt_tokens, d) * 0.02)
        self.null_embedding = nn.Parameter(torch.randn(1, prompt_tokens, d) * 0.02)

    def forward(self, link_states: torch.Tensor) -> torch.Tensor:
        src = self.emb_proj(link_states)  # (B, Q, D)
        tgt = self.queries.expand(link_states.shape[0], -1, -1)  # (B, T, D)
        return self.transformer(src, tgt)  # (B, T, D)

    def null(self, batch_size: int) -> torch.Tensor:
        return self.null_embedding.expand(batch_size, -1, -1)  # (B, T, D)

    def drop_to_null(self, embeds: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace the rows where `drop` (B,) is True by the null embedding (classifier-free guidance training)."""
        return torch.where(drop[:, None, None], self.null(embeds.shape[0]), embeds)  # (B, T, D)
