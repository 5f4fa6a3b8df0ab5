"""The scripted engine for serving [COUNT] (tests/plugins/count_route.py): "count the circles" answers
"the circles [COUNT]", next to the built-in verbs (tests.doubles.KEYWORDS)."""

from __future__ import annotations

from collections.abc import Sequence

from tests.doubles import KEYWORDS, ScriptedPipeline


class CountScriptedPipeline(ScriptedPipeline):
    keywords = {**KEYWORDS, "count": "COUNT"}


def scripted_engine(model: str, decoders: Sequence[str] | None = None, with_model: bool = True) -> CountScriptedPipeline:
    """`engine_factory` entry point (Pipeline.from_pretrained's signature)."""
    return CountScriptedPipeline.from_pretrained(model, decoders=decoders, with_model=with_model)
