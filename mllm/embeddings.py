"""Growing a trained model's token embeddings for new tokens, and loading weights without a second copy.

`grow_token_embeddings` is the one place that adds token rows (SuperLink's tokens on a LLaVA
checkpoint, a new route's tokens on a trained SuperLink model). transformers' default
`resize_token_embeddings` samples the new rows from a multivariate normal fitted to the old ones,
which at 4096 wide takes minutes on a CPU (a 4096 x 4096 covariance factorisation per matrix);
here the new rows are the mean of the old rows, computed once, which is what that sampling is
centred on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights


@torch.no_grad()
def grow_token_embeddings(model: PreTrainedModel, num_tokens: int, known_tokens: int | None = None) -> int:
    """Give `model` at least `num_tokens` embedding (and output) rows; new rows start at the mean.

    Rows the checkpoint already has beyond its tokenizer (LLaVA-1.5 pads 32002 tokens to 32064 rows)
    are kept and taken by the first new tokens; only rows past the old matrix are added. The mean is
    taken over the first `known_tokens` rows (the tokens the checkpoint was trained on; all rows when
    None), so untrained padding rows do not pull it. Returns the number of rows added.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if num_tokens <= old:
        return 0
    known = old if known_tokens is None else min(known_tokens, old)
    if known < 1:
        raise ValueError(f"known_tokens must be >= 1 to take a mean, got {known_tokens}")
    means = [m.weight[:known].float().mean(0) for m in _token_matrices(model)]  # (D,) each
    with no_init_weights():  # every row is set below: old rows copied by transformers, new rows the mean
        model.resize_token_embeddings(num_tokens, mean_resizing=False)
    for matrix, mean in zip(_token_matrices(model), means, strict=True):
        matrix.weight[old:] = mean.to(matrix.weight.dtype)
    return num_tokens - old


def _token_matrices(model: PreTrainedModel) -> list[nn.Module]:
    """The input embedding and, when it is a separate matrix, the output projection."""
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is emb.weight:
        return [emb]
    return [emb, out]


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype` (no float32 copy first)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@torch.no_grad()
def load_weights(module: nn.Module, path: str | Path) -> None:
    """Copy a safetensors file into `module` one tensor at a time (strict; tied tensors may be stored once).

    Unlike reading the whole file first, the peak memory is the model plus one tensor.
    """
    state = module.state_dict(keep_vars=True)
    loaded: set[int] = set()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        unexpected = sorted(keys - state.keys())
        if unexpected:
            raise KeyError(f"{path}: weights {unexpected[:5]} have no place in {type(module).__name__}")
        for name in keys:
            target = state[name]
            value = f.get_tensor(name)
            if value.shape != target.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, the model {tuple(target.shape)}")
            target.data.copy_(value)
            loaded.add(id(target))
    missing = [n for n, t in state.items() if n not in keys and id(t) not in loaded]
    if missing:
        raise KeyError(f"{path}: weights missing for {missing[:5]} ({len(missing)} in all)")
