"""Test doubles of the serving engine (tests and the serving benchmarks); importable by Ray workers by name.

    ScriptedPipeline  the real Pipeline with its answer forced from the instruction's verbs
                      ("detect the stars, draw a square" -> "the stars [DET], a square [GEN]"),
                      so a random-weight preset fires real routes through real decoders
                      (`engine_factory: tests.doubles:scripted_engine`)
    scripted_chat_model  a LangChain chat model that calls the superlink tool once, then answers
    FakePipeline      a deterministic stand-in with the Pipeline's stage methods and stage types,
                      isolating the serving layer; failures or delays injectable per decoder
                      (`engine_factory: tests.doubles:fake_engine`)
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from router.pipeline import Pipeline, forced_answer_hook, generation_groups
from router.routes import BUILTIN_ROUTES, ROUTES, route_decoders
from router.schemas import Detection, GeneratedImage, Item, Request, Response
from router.stages import DecoderCall, DecoderResult, GenerationResult, LinkRecord, Prepared, RequestError
from services.cancel import check as check_cancelled

ROUTE_DECODERS = route_decoders(BUILTIN_ROUTES)  # the fake serves the built-in routes
KEYWORDS = {"detect": "DET", "segment": "SEG", "ground": "GRD", "pose": "POSE", "draw": "GEN", "edit": "EDIT"}


def scripted_routes(instruction: str, keywords: Mapping[str, str] = KEYWORDS) -> list[tuple[str, str]]:
    """(route, phrase) for each clause that starts with a verb of `keywords`: "detect the stars" -> ("DET", "the stars")."""
    out = []
    for clause in re.split(r",|;|\band\b", instruction):
        words = clause.split()
        if words and words[0].lower() in keywords:
            out.append((keywords[words[0].lower()], " ".join(words[1:]) or "it"))
    return out


def scripted_answer(instruction: str, keywords: Mapping[str, str] = KEYWORDS) -> str:
    """The answer a scripted model gives.

    "detect the stars, segment the circles and draw a green square"
        -> "the stars [DET], the circles [SEG], a green square [GEN]"
    """
    routes = scripted_routes(instruction, keywords)
    return ", ".join(f"{phrase} [{route}]" for route, phrase in routes) if routes else "an image"


class ScriptedPipeline(Pipeline):
    """The real Pipeline whose generation is forced to `scripted_answer(instruction)`.

    Random tiny weights rarely emit routing tokens; forcing the answer makes the routes a
    request asks for fire for real (queries fed, link states gathered, real decoders run).
    One generate per generation group, since the forcing hook is built for that group's rows.
    Not thread-safe (the hook is instance state); the serving engines call it under a lock.
    `keywords` (verb -> route) is where a subclass adds the verbs of its own routes.
    """

    keywords: Mapping[str, str] = KEYWORDS

    def generate(self, prepared: Sequence[Prepared]) -> list[GenerationResult]:
        out: dict[int, GenerationResult] = {}
        for group in generation_groups(prepared):
            rows = [prepared[i] for i in group]
            answers = [scripted_answer(p.instruction, self.keywords) for p in rows]
            self.logits_hook = forced_answer_hook(self.system.model.tokenizer, answers)
            out.update(zip(group, super().generate(rows), strict=True))
        return [out[i] for i in range(len(prepared))]


def scripted_engine(model: str, decoders: Sequence[str] | None = None, with_model: bool = True) -> ScriptedPipeline:
    """`engine_factory` entry point: ScriptedPipeline.from_pretrained."""
    return ScriptedPipeline.from_pretrained(model, decoders=decoders, with_model=with_model)


_PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


@dataclass
class FakePipeline:
    """Keyword-driven stand-in; `fail` decoders raise, `delay_s` decoders sleep first."""

    deployed_routes: list[str] = field(default_factory=lambda: list(ROUTE_DECODERS))
    fail: set[str] = field(default_factory=set)
    delay_s: dict[str, float] = field(default_factory=dict)
    generate_delay_s: float = 0.0
    slow_only: bool = False  # delay_s applies only to calls whose phrase contains "slow"
    decoder_calls: list[tuple[str, int]] = field(default_factory=list)  # (decoder, number of calls)

    @property
    def system(self) -> SimpleNamespace:
        """Mimics Pipeline.system: .table[route].decoder, .decoders, .model."""
        table = {r: SimpleNamespace(decoder=d) for r, d in ROUTE_DECODERS.items()}
        return SimpleNamespace(table=table, decoders=dict.fromkeys(ROUTE_DECODERS.values()), model=self)

    def __call__(self, request: Request) -> Response:
        """The whole in-process call for one request (the stages in order, decoders one after another)."""
        prepared = self.prepare([request])
        generations = self.generate(prepared)
        plan = self.plan(prepared, generations)
        results = {name: self.run_decoder(name, calls) for name, calls in plan.items()}
        return self.assemble(prepared, generations, results, {})[0]

    def prepare(self, requests: Sequence[Request]) -> list[Prepared]:
        return [self._prepare_one(r, i) for i, r in enumerate(requests)]

    def _prepare_one(self, r: Request, i: int) -> Prepared:
        if "reject" in r.instruction:
            raise RequestError(f"request {i}: the instruction asks to be rejected")
        for name in r.options.routes or []:
            if name not in self.deployed_routes:
                raise RequestError(f"request {i}: route {name!r} is not deployed; deployed: {self.deployed_routes}")
        return Prepared(index=i, instruction=r.instruction, images=[], regions=[], options=r.options, classes=[])

    def generate(self, prepared: Sequence[Prepared]) -> list[GenerationResult]:
        """Rejects the whole batch when one instruction says "choke", as a too-long prompt would."""
        _sleep(self.generate_delay_s)
        if any("choke" in p.instruction for p in prepared):
            raise RequestError("the processor refused an instruction that says choke")
        return [self._generate_one(p) for p in prepared]

    def _generate_one(self, p: Prepared) -> GenerationResult:
        allowed = p.options.routes or self.deployed_routes
        links = [
            LinkRecord(route=route, position=k, phrase=phrase, states=np.zeros((2, 4), np.float32))
            for k, (route, phrase) in enumerate(r for r in scripted_routes(p.instruction) if r[0] in allowed)
        ]
        text = ", ".join(f"{link.phrase} [{link.route}]" for link in links) or "nothing to route"
        return GenerationResult(index=p.index, text=text, links=links)

    def plan(self, prepared: Sequence[Prepared], generations: Sequence[GenerationResult]) -> dict[str, list[DecoderCall]]:
        plan: dict[str, list[DecoderCall]] = {}
        for p, g in zip(prepared, generations, strict=True):
            for k, link in enumerate(g.links):
                call = DecoderCall(
                    request=p.index, event=k, route=link.route, phrase=link.phrase, states=link.states,
                    image=None, image_index=None, options=p.options,
                )
                plan.setdefault(ROUTE_DECODERS[link.route], []).append(call)
        return plan

    def run_decoder(self, name: str, calls: Sequence[DecoderCall]) -> list[DecoderResult]:
        if not self.slow_only or any("slow" in c.phrase for c in calls):
            _sleep(self.delay_s.get(name, 0.0))
        if name in self.fail:
            raise RuntimeError(f"{name} is broken on purpose")
        self.decoder_calls.append((name, len(calls)))
        return [DecoderResult(request=c.request, event=c.event, route=c.route, phrase=c.phrase, items=[_item(c)],
                             noun=ROUTES[c.route].noun if c.route in ROUTES else "result") for c in calls]

    def assemble(
        self,
        prepared: Sequence[Prepared],
        generations: Sequence[GenerationResult],
        results: Mapping[str, Sequence[DecoderResult]],
        timings: Mapping[str, float],
    ) -> list[Response]:
        by_index = {g.index: Response(text=g.text, raw_text=g.text, routes=[x.route for x in g.links]) for g in generations}
        for res in (r for rs in results.values() for r in rs):
            resp = by_index[res.request]
            if res.error is not None:
                resp.errors.append(res.error)
            for item in res.items:
                (resp.images if isinstance(item, GeneratedImage) else resp.detections).append(item)
        responses = [by_index[p.index] for p in prepared]
        for resp in responses:
            resp.timings_ms.update(timings)
        return responses


def _sleep(seconds: float) -> None:
    """Sleep like a model running `seconds`, stopping early (Cancelled) when the caller gives up."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        check_cancelled()
        time.sleep(min(left, 0.01))


def _item(call: DecoderCall) -> Item:
    if call.route in ("GEN", "EDIT"):
        return GeneratedImage(route=call.route, phrase=call.phrase, png_base64=_PNG_1PX, width=1, height=1)
    return Detection(route=call.route, phrase=call.phrase, label=call.phrase, box=(0, 0, 1, 1), score=0.9)


def fake_engine(model: str, decoders: Sequence[str] | None = None, with_model: bool = True) -> FakePipeline:
    """`engine_factory` entry point with Pipeline.from_pretrained's signature; the model name is ignored."""
    return FakePipeline()


class ScriptedChatModel(GenericFakeChatModel):
    """GenericFakeChatModel refuses bind_tools; agents need it, so this one returns itself."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self


def scripted_chat_model(instruction: str, image_ids: list[str], final_answer: str = "Done.") -> ScriptedChatModel:
    """An offline chat model that calls the superlink tool once with `instruction`, then answers."""
    call = {"name": "superlink", "args": {"instruction": instruction, "image_ids": image_ids}, "id": "call_1",
            "type": "tool_call"}
    return ScriptedChatModel(messages=iter([AIMessage(content="", tool_calls=[call]), AIMessage(content=final_answer)]))
