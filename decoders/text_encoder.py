"""A frozen text encoder for the diffusion decoders' teacher conditioning and link alignment.

VisionLLM v2 trains its generation links against a frozen CLIP text encoder: the UNet was trained on
CLIP features, and the mapped link states are pulled towards CLIP's encoding of the caption (MSE,
weight 0.1). SuperLink's embedded model has no pretrained text encoder, so this one is fixed by
construction: every word gets a pseudo-random vector seeded by its CRC32 (the same in every process),
plus a sinusoidal position code. It has no weights and nothing to download; distinct descriptions
get distinct, well-spread prompt embeddings, which is all a teacher for a synthetic world needs.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence

import numpy as np
import torch

WORD = re.compile(r"[a-z0-9]+")


class FrozenTextEncoder:
    """texts -> (B, tokens, dim) prompt embeddings: one word per token, zero-padded, unit variance per feature."""

    def __init__(self, dim: int, tokens: int) -> None:
        self.dim, self.tokens = dim, tokens
        position = np.arange(tokens)[:, None] / 10_000 ** (np.arange(0, dim, 2) / dim)  # (T, D/2)
        code = np.zeros((tokens, dim))
        code[:, 0::2], code[:, 1::2] = np.sin(position), np.cos(position)[:, : dim // 2]
        self.position = torch.from_numpy(0.5 * code).float()  # (T, D)
        self._words: dict[str, torch.Tensor] = {}

    def word(self, word: str) -> torch.Tensor:
        if word not in self._words:
            rng = np.random.default_rng(zlib.crc32(word.encode()))
            self._words[word] = torch.from_numpy(rng.standard_normal(self.dim)).float()
        return self._words[word]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.tokens, self.dim)
        for b, text in enumerate(texts):
            words = WORD.findall(text.lower())[: self.tokens]
            for t, w in enumerate(words):
                out[b, t] = self.word(w) + self.position[t]
        return out

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """texts -> (B, dim): the sum of each text's word vectors over sqrt(#words), unit variance per feature."""
        out = torch.zeros(len(texts), self.dim)
        for b, text in enumerate(texts):
            words = WORD.findall(text.lower())
            if words:
                out[b] = torch.stack([self.word(w) for w in words]).sum(0) / math.sqrt(len(words))
        return out
