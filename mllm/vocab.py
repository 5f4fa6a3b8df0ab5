"""SuperLink's extended vocabulary, declared once.

Token strings:
  <loc_0> ... <loc_{B-1}>    location bins over the normalised image side
  <cls_0> ... <cls_{K-1}>    class slots bound per request ("detect cat, dog" -> cls_0=cat, cls_1=dog)
  [DET] [SEG] [GRD] [POSE] [GEN] [EDIT]   routing tokens
  [DET_Q] ...                one query placeholder per route; in training text each routing
                             token is followed by `num_queries` copies of its placeholder
  <image> <region>           expanded by the processor

Answer conventions (what ShapesWorld writes and what generation parses):
  routed phrase   "<phrase> [DET]"; phrases are separated by ", ", "; ", " and ", ":" or "."
  native box      "<cls_k><loc_x1><loc_y1><loc_x2><loc_y2>" (the class slot is optional for grounding)
  polygon         "<cls_k>" then 2N location tokens x1 y1 x2 y2 ...
  point           two location tokens x y
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mllm.config import MLLMConfig

IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"


@dataclass(frozen=True)
class Route:
    """One routing token and its super-link queries."""

    name: str  # "DET"
    num_queries: int

    @property
    def token(self) -> str:
        return f"[{self.name}]"

    @property
    def placeholder(self) -> str:
        return f"[{self.name}_Q]"


def loc_token(i: int) -> str:
    return f"<loc_{i}>"


def cls_token(i: int) -> str:
    return f"<cls_{i}>"


@dataclass(frozen=True)
class Vocabulary:
    location_bins: int
    class_slots: int
    routes: tuple[Route, ...]

    @classmethod
    def from_config(cls, cfg: MLLMConfig) -> Vocabulary:
        routes = tuple(Route(name, q) for name, q in cfg.routes.items())
        return cls(cfg.vocab.location_bins, cfg.vocab.class_slots, routes)

    @property
    def special_tokens(self) -> list[str]:
        """Every added token, in a fixed order (their ids follow the base vocabulary)."""
        toks = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, REGION_TOKEN]
        for r in self.routes:
            toks += [r.token, r.placeholder]
        toks += [cls_token(i) for i in range(self.class_slots)]
        toks += [loc_token(i) for i in range(self.location_bins)]
        return toks

    def route(self, name_or_token: str) -> Route:
        key = name_or_token.strip("[]")
        for r in self.routes:
            if r.name == key:
                return r
        known = ", ".join(r.token for r in self.routes)
        raise KeyError(f"unknown route {name_or_token!r}; declared routes: {known}")

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.routes)


_ROUTE_RE = re.compile(r"\[([A-Z]+)\]")
_SEPARATORS = re.compile(r"(?:,|;|:|\.|\n|\band\b|\[[A-Z]+(?:_Q)?\]|<[a-z]+_?\d*>)")
_LEADING = re.compile(r"^(?:the|a|an|all|every|each|here is|here are|sure|yes)\s+", re.IGNORECASE)


def phrase_before(prefix: str) -> str:
    """The phrase a routing token refers to: the text after the last separator in `prefix`.

    "Sure, here are the red circles [DET]" -> "red circles"
    """
    parts = _SEPARATORS.split(prefix)
    phrase = parts[-1].strip() if parts else ""
    prev = None
    while prev != phrase:  # strip stacked leading words: "here are the ..."
        prev, phrase = phrase, _LEADING.sub("", phrase).strip()
    return phrase


def route_names_in(text: str) -> list[str]:
    """Routing token names in order of appearance in `text` (placeholders excluded)."""
    return _ROUTE_RE.findall(text)
