"""A byte-level BPE tokenizer for the small presets, trained on the ShapesWorld instruction corpus.

Byte-level, so any user text round-trips; every SuperLink token (location, class,
routing, placeholders, <image>, <region>) is one added special token with a fixed id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mllm.vocab import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, Vocabulary


def build_tokenizer(corpus: Iterable[str], vocab: Vocabulary, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train BPE on `corpus`, then add SuperLink's tokens (their ids follow the BPE vocabulary).

    SuperLink's tokens are cut out of the corpus first: they are added whole afterwards, so merges learnt on
    their spelling ("<loc_", "><") would be wasted on text the model never sees as bytes."""
    special = re.compile("|".join(re.escape(t) for t in sorted(vocab.special_tokens, key=len, reverse=True)))
    corpus = (special.sub(" ", text) for text in corpus)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    add_superlink_tokens(fast, vocab)
    return fast


def add_superlink_tokens(tokenizer: PreTrainedTokenizerFast, vocab: Vocabulary) -> int:
    """Add SuperLink's tokens as special tokens; returns how many were new."""
    n = tokenizer.add_special_tokens(
        {"pad_token": PAD_TOKEN, "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN}
    )
    others = [t for t in vocab.special_tokens if t not in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)]
    n += tokenizer.add_tokens(others, special_tokens=True)
    tokenizer.padding_side = "left"  # batched generation pads on the left
    return n


def resegment(tokenizer: PreTrainedTokenizerFast, ids: list[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Subword regularisation: each plain BPE token is, with probability `rate`, split at a random inner
    character and its two parts re-tokenized by the BPE model (recursively, so a part may split again).

    The text is unchanged (the ids decode to the same string); only its segmentation differs, so a model
    trained on such rows meets the pieces of misspelt and unknown words beside the usual merges. Added tokens
    (SuperLink's, <image>, <s>) are never split. Deterministic for a given `rng` state.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"subword dropout rate must be in [0, 1); got {rate}")
    if rate == 0.0:
        return list(ids)
    model = tokenizer.backend_tokenizer.model
    added = set(tokenizer.added_tokens_decoder)
    vocab = tokenizer.convert_ids_to_tokens

    def split(token: str) -> list[int]:
        if len(token) < 2 or rng.random() >= rate:
            return [model.token_to_id(token)]
        k = int(rng.integers(1, len(token)))
        return [i for part in (token[:k], token[k:]) for t in model.tokenize(part) for i in split(t.value)]

    out: list[int] = []
    for i in ids:
        out += [i] if i in added else split(vocab(i))
    return out
