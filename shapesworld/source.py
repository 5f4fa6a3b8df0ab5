"""ShapesWorld as a training data source: kind "shapesworld" of the training.data section (router/sources.py).

Data sources import the router, never the reverse (DESIGN.md): importing this module registers the kind
(router.sources.register_source_kind), and router.sources.KIND_MODULES imports it the first time a config
uses the kind.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from router.config import ShapesWorldSource, SuperLinkConfig
from router.samples import TaskSample
from router.sources import DataSourceError, SourceKind, register_source_kind
from shapesworld.constants import COLORS, KINDS
from shapesworld.tasks import NUMBERS, TASKS, corpus, make_sample

TOKENIZER_CORPUS = 256  # ShapesWorld samples the small presets' BPE is trained on (deterministic)
# VQA's closed answer vocabulary. A sample of every task holds few VQA answers, so BPE left "zero", "one",
# "yes", "no" and "bottom" in pieces, and a count was decided over two positions (" " + "one"); listed this
# many times beside the samples, every answer word becomes one token.
ANSWER_WORDS = (*NUMBERS, "yes", "no", "left", "right", "top", "bottom", *KINDS, *COLORS)
ANSWER_WORDS_REPEAT = 32


class ShapesWorldData:
    def __init__(self, spec: ShapesWorldSource, name: str, cfg: SuperLinkConfig) -> None:
        self.name, self.weight = name, spec.weight
        weights = (spec.task_weights if spec.task_weights is not None else cfg.training.task_weights) or dict.fromkeys(
            TASKS, 1.0)
        unknown = set(weights) - set(TASKS)
        if unknown:
            raise DataSourceError(f"training.data {name!r}: task_weights names unknown tasks {sorted(unknown)}; "
                                  f"accepted: {list(TASKS)}")
        self.tasks = [t for t, w in weights.items() if w > 0]
        if not self.tasks:
            raise DataSourceError(f"training.data {name!r}: every task weight is 0")
        p = np.array([weights[t] for t in self.tasks], float)
        self.p = p / p.sum()
        self.image_size, self.bins = cfg.training.image_size, cfg.model.vocab.location_bins
        self.wording = cfg.training.wording

    def draw(self, rng: np.random.Generator, n: int) -> list[TaskSample]:
        picks = rng.choice(len(self.tasks), size=n, p=self.p)  # all task picks first, then the samples
        return [make_sample(self.tasks[int(k)], rng, self.image_size, self.bins, wording=self.wording) for k in picks]


def tokenizer_corpus(location_bins: int) -> Iterator[str]:
    """The texts a from-scratch BPE learns when a shapesworld source is configured ("instruction\nanswer")."""
    yield from corpus(TOKENIZER_CORPUS, image_size=64, location_bins=location_bins)
    words = " ".join(ANSWER_WORDS)
    for _ in range(ANSWER_WORDS_REPEAT):
        yield f"\n{words}"


register_source_kind("shapesworld", SourceKind(open=ShapesWorldData, corpus=tokenizer_corpus))
