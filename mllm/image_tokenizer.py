"""Language-guided image tokenizer (VisionLLM v1, section 3.2).

LLaVA hands the LLM one projected feature per patch, the same whatever was asked. VisionLLM v1 instead
produces the visual tokens with M learned queries that attend to the image features under the guidance
of the instruction. Here:

    text   = mean of the instruction's token embeddings                    (N_img, D)
    q      = queries (M, D) + Linear(text)                                 (N_img, M, D)
    q      = q + CrossAttention(LN(q), patches, patches); q = q + MLP(LN(q))   (num_layers times)
    tokens = LN(q)                                                         (N_img, M, D)

where `patches` are the projected patch features (N_img, P, D). With combine "replace" the M tokens are
the visual tokens; with "add" (M = P) they are added to the patch tokens, scaled to each patch feature's
RMS, through a tanh gate that starts at zero, so a trained model gains the tokenizer without changing
its output at the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from mllm.config import ImageTokenizerConfig


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention from queries to a memory, then an MLP; both residual."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden)
        self.norm_kv = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """q (N, M, D), memory (N, P, D) -> (N, M, D)."""
        kv = self.norm_kv(memory)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class LanguageGuidedTokenizer(nn.Module):
    def __init__(self, config: ImageTokenizerConfig, hidden: int, num_tokens: int, default_heads: int) -> None:
        super().__init__()
        heads = config.num_heads or default_heads
        if hidden % heads:
            raise ValueError(f"image_tokenizer.num_heads {heads} does not divide the hidden size {hidden}")
        self.combine = config.combine
        self.queries = nn.Embedding(num_tokens, hidden)
        nn.init.normal_(self.queries.weight, std=0.02)
        self.text_proj = nn.Linear(hidden, hidden)
        self.layers = nn.ModuleList([CrossAttentionBlock(hidden, heads) for _ in range(config.num_layers)])
        self.norm_out = nn.LayerNorm(hidden)
        # "add": tokens enter through tanh(gate), zero at the start (Flamingo's gated cross-attention).
        self.gate = nn.Parameter(torch.zeros(1)) if config.combine == "add" else None

    def pooled_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(N, T, D) token embeddings and (N, T) bool mask -> (N, D) mean over the instruction tokens."""
        w = text_mask.to(text.dtype)[..., None]  # (N, T, 1)
        return (text * w).sum(1) / w.sum(1).clamp(min=1.0)

    def forward(self, patches: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """patches (N, P, D) projected patch features; text (N, T, D) and text_mask (N, T) of each image's
        instruction -> (N, M, D) visual tokens."""
        cond = self.text_proj(self.pooled_text(text, text_mask))  # (N, D)
        q = self.queries.weight[None] + cond[:, None]  # (N, M, D)
        for layer in self.layers:
            q = layer(q, patches)
        tokens = self.norm_out(q)
        if self.gate is None:
            return tokens
        if tokens.shape[1] != patches.shape[1]:
            raise ValueError(f"combine 'add' needs one token per patch ({patches.shape[1]}), got {tokens.shape[1]}")
        # Unit-RMS tokens scaled to each patch feature's own RMS: projected features of a trained model can be
        # far from unit scale (the shipped `shapes` projector outputs RMS ~300), where a unit-scale addition
        # would be lost.
        scale = patches.detach().float().pow(2).mean(-1, keepdim=True).sqrt().to(tokens.dtype)  # (N, P, 1)
        return patches + torch.tanh(self.gate) * scale * tokens
