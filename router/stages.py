"""Plain, picklable data passed between the pipeline stages.

The Ray Serve deployments run the stages in separate processes, so everything here
is numpy arrays, dataclasses and pydantic models: never torch tensors or modules.

    prepare(requests)          -> list[Prepared]
    generate(prepared)         -> list[GenerationResult]
    plan(prepared, gens)       -> dict[decoder name, list[DecoderCall]]
    run_decoder(name, calls)   -> list[DecoderResult]   (aligned with calls; a failed part
                                  carries a PartError in DecoderResult.error)
    assemble(...)              -> list[Response]
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from router.schemas import Item, Options, PartError

# The answer text as it is generated: a caller that wants it (services/streaming.py) sets a callback here for
# its own context; Pipeline.generate then calls it after every step with (Prepared.index, text so far). A
# context variable, not pipeline state, so concurrent callers never see each other's text; it does not cross
# process boundaries (a Ray MLLM deployment streams nothing token by token) and costs nothing when unset.
GENERATED_TEXT_SINK: ContextVar[Callable[[int, str], None] | None] = ContextVar("generated_text_sink", default=None)


class RequestError(ValueError):
    """A request the system cannot serve (bad image, unknown route, ...): the HTTP layer answers 4xx."""


@dataclass
class Prepared:
    """One validated request: decoded images and what generation and the decoders need."""

    index: int  # position of the request in the batch
    instruction: str
    images: list[np.ndarray]  # each (H, W, 3) uint8, RGB
    regions: list[dict]  # processor form: {"image": k, and one of "box", "point", "mask" (RLE dict)}
    options: Options
    classes: list[str]  # class-slot binding from the instruction (cls_k -> classes[k]); may be empty
    localize: str = "auto"  # "polygon" when the instruction asks for polygons (mllm.localize.localize_request)
    polygon_points: int | None = None  # the point count each polygon must have (set with localize="polygon")

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) per image, the convention of mllm.codec."""
        return [(int(im.shape[1]), int(im.shape[0])) for im in self.images]


@dataclass
class LinkRecord:
    """A link event as numpy: one routing token the model emitted and its link states."""

    route: str
    position: int  # index of the routing token in the row's generated ids
    phrase: str
    states: np.ndarray  # (Q, D) float32


@dataclass
class GenerationResult:
    index: int
    text: str  # routing tokens kept, query placeholders dropped
    links: list[LinkRecord] = field(default_factory=list)
    finished: bool = True
    elapsed_ms: float = 0.0


@dataclass
class DecoderCall:
    """One link event bound for a decoder, with the request inputs that decoder needs."""

    request: int  # Prepared.index
    event: int  # index into GenerationResult.links
    route: str
    phrase: str
    states: np.ndarray  # (Q, D) link states from the LLM, not yet projected
    image: np.ndarray | None  # (H, W, 3) uint8: the request's first image, or None
    image_index: int | None
    options: Options


@dataclass
class DecoderResult:
    request: int
    event: int
    route: str
    phrase: str
    items: list[Item] = field(default_factory=list)
    error: PartError | None = None  # set when this part failed; items is then empty
    noun: str = "result"  # what one item is called in Response.text: the route's RouteSpec.noun

    @property
    def summary(self) -> str:
        """Readable reference that replaces the routing token in Response.text."""
        n = len(self.items)
        return f"{n} {self.noun}{'' if n == 1 else 's'}"


def failed(call: DecoderCall, kind: str, message: str) -> DecoderResult:
    """The result of a part that could not be answered."""
    err = PartError(route=call.route, phrase=call.phrase, kind=kind, message=message)
    return DecoderResult(call.request, call.event, call.route, call.phrase, error=err)
