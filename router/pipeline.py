"""The in-process SuperLink pipeline: request -> MLLM -> decoders -> response, without Ray.

    pipe = Pipeline.from_pretrained("tiny")          # or a folder written by save_pretrained
    response = pipe(Request(images=[png], instruction="detect the stars [DET] ..."))

A call runs five stages, each taking and returning plain picklable data so that the
Ray Serve deployments can run them in separate processes (see router/stages.py):
prepare -> generate -> plan -> run_decoder (one per decoder, concurrently) -> assemble.
Building, saving and loading the system is router/system.py; the decoder workers are router/workers.py.

Routes: `Options.routes` restricts which routing tokens may fire. Naming a route the
model does not declare, or one whose decoder is not deployed, is a `RequestError`
(the HTTP layer answers 4xx). A route the model emits whose decoder is missing
becomes a `PartError(kind="route_not_deployed")` for that part only.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from mllm.devices import resolve_device, resolve_dtype
from mllm.generation import decode_text, generate
from mllm.images import ImageError, load_image
from mllm.localize import LocalizeError, LocalizeRequest, localize_request, parse_class_list
from mllm.processor import SuperLinkProcessor
from mllm.scribble import ScribbleError, check_scribble
from router.assets import shipped_checkpoint
from router.bindings import BindingTable, DecoderBuilder, SuperLinkSystem, run_route
from router.config import SuperLinkConfig, load_config
from router.response import assemble_response
from router.schemas import Options, Request, Response
from router.stages import (
    GENERATED_TEXT_SINK,
    DecoderCall,
    DecoderResult,
    GenerationResult,
    LinkRecord,
    Prepared,
    RequestError,
    failed,
)
from router.system import build_system, load_system, route_table, save_system
from router.workers import DecoderWorkers, Timed, torch_threads

RequestLike = Request | Mapping[str, Any]
LogitsHook = Callable[[int, torch.Tensor], torch.Tensor]


class Pipeline:
    def __init__(
        self,
        config: SuperLinkConfig,
        system: SuperLinkSystem,
        processor: Any | None,
        deployed_routes: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        self.system = system.eval()
        self.processor = processor
        # Routes a request may name; an ingress without decoders sets this from the serving config.
        self.deployed_routes = list(deployed_routes if deployed_routes is not None else system.deployed_routes)
        # Optional (step, logits (B, V)) -> logits edit applied during generation (tests and benchmarks force routes).
        self.logits_hook: LogitsHook | None = None
        # None: native box answers use the model's format queries when it has them; False: token by token.
        self.format_decoding: bool | None = None
        self._workers = DecoderWorkers(self._timed)  # threads or forked processes, started on first concurrent call

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: SuperLinkConfig,
        bindings: BindingTable | None = None,
        decoder_builders: Mapping[str, DecoderBuilder] | None = None,
        decoders: Sequence[str] | None = None,
        with_model: bool = True,
        device: str | None = None,
        dtype: str | None = None,
    ) -> Pipeline:
        """Random weights from `config`; `decoders` picks which decoders to build (default: all bound).
        `device`/`dtype` override the config's (mllm.devices; "auto" allowed)."""
        system, processor = build_system(config, bindings, decoder_builders, decoders, with_model)
        return cls(config, system, processor).place(device, dtype)

    @classmethod
    def from_pretrained(
        cls,
        preset_or_dir: str | Path,
        bindings: BindingTable | None = None,
        decoder_builders: Mapping[str, DecoderBuilder] | None = None,
        decoders: Sequence[str] | None = None,
        with_model: bool = True,
        device: str | None = None,
        dtype: str | None = None,
    ) -> Pipeline:
        """A folder written by `save_pretrained`, a preset name with a shipped checkpoint
        (checkpoints/<name>/, e.g. "shapes"), or any other preset name (random weights, e.g. "tiny").
        `device`/`dtype` override the config's (mllm.devices; "auto" allowed)."""
        path = Path(preset_or_dir)
        if not path.is_dir():
            path = shipped_checkpoint(str(preset_or_dir)) or path
        if path.is_dir():
            config, system, processor = load_system(path, bindings, decoder_builders, decoders, with_model)
            return cls(config, system, processor).place(device, dtype)
        config = load_config(preset_or_dir)
        return cls.from_config(config, bindings, decoder_builders, decoders, with_model, device, dtype)

    def to(self, device: str | torch.device, dtype: str | torch.dtype | None = None) -> Pipeline:
        """Move the model, projectors and decoders (device and dtype as in mllm.devices, "auto" allowed);
        every stage moves its own inputs to its part's device."""
        device = resolve_device(device)
        if isinstance(dtype, str):
            dtype = resolve_dtype(dtype, device)
        self.system.to(device=device, dtype=dtype)
        return self

    def place(self, device: str | None = None, dtype: str | None = None) -> Pipeline:
        """Move to `device`/`dtype`, or to the config's `device`/`dtype` where they are None."""
        return self.to(device or self.config.device, dtype or self.config.dtype)

    def add_routes(self, config: SuperLinkConfig, decoder_builders: Mapping[str, DecoderBuilder] | None = None) -> list[str]:
        """Grow this (trained) pipeline to the routes `config` declares: those the model lacks are added
        (SuperLinkModel.add_routes: tokens appended, embeddings at the mean, new query tables), with their
        projectors and any decoder they need built from `config`. Every other weight is kept, so the old routes
        answer as before; the new parts are untrained. Returns the routes added."""
        model = self.system.model
        if model is None:
            raise ValueError("add_routes needs the MLLM in this process (with_model=True)")
        added = model.add_routes(config.model.routes)
        config = config.model_copy(update={"model": model.config})
        table, builders = route_table(config, None, decoder_builders)
        ref = next(model.parameters())
        for route in (r for r in added if r in table):
            spec = table[route]
            if spec.decoder not in self.system.decoders:
                self.system.decoders[spec.decoder] = builders[spec.decoder](config).to(ref.device)
            link_dim = int(self.system.decoders[spec.decoder].link_dim)
            self.system.projectors[route] = spec.projector(model.llava.config.text_config.hidden_size, link_dim).to(ref.device)
            self.system.table[route] = spec
            self.deployed_routes.append(route)
        self.config = config
        self.processor = SuperLinkProcessor(model.tokenizer, model.config)
        return added

    def save_pretrained(self, out_dir: str | Path) -> Path:
        return save_system(self.config, self.system, self.processor, Path(out_dir))

    # ---- the whole call ---------------------------------------------------------------------
    def __call__(self, requests: RequestLike | Sequence[RequestLike]) -> Response | list[Response]:
        single = not isinstance(requests, list | tuple)
        batch = [requests] if single else list(requests)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prepared = self.prepare(batch)
        timings["preprocess"] = _ms(t0)
        t1 = time.perf_counter()
        generations = self.generate(prepared)
        timings["generate"] = _ms(t1)
        calls = self.plan(prepared, generations)
        results = self.run_decoders(calls, timeout_s=_timeout(prepared), timings=timings)
        timings["total"] = _ms(t0)
        responses = self.assemble(prepared, generations, results, timings)
        return responses[0] if single else responses

    # ---- stage 1: prepare -------------------------------------------------------------------
    def prepare(self, requests: Sequence[RequestLike]) -> list[Prepared]:
        """Validate requests and decode their images; a bad request raises RequestError."""
        if not requests:
            raise RequestError("empty batch: pass at least one request")
        out = []
        for i, raw in enumerate(requests):
            try:
                req = raw if isinstance(raw, Request) else Request.model_validate(raw)
            except ValidationError as err:
                raise RequestError(f"request {i}: {err}") from None
            self._check_routes(req.options, i)
            out.append(prepare_request(req, i, self.config))
        return out

    def _check_routes(self, options: Options, i: int) -> None:
        if options.routes is None:
            return
        declared = list(self.config.model.routes)
        for r in options.routes:
            name = r.strip("[]")
            if name not in declared:
                raise RequestError(f"request {i}: options.routes names unknown route {r!r}; declared: {declared}")
            if name not in self.deployed_routes:
                raise RequestError(
                    f"request {i}: route {name!r} is not deployed (route_not_deployed); deployed: {self.deployed_routes}"
                )

    # ---- stage 2: generate ------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prepared: Sequence[Prepared]) -> list[GenerationResult]:
        """One batched routed generation across all requests; link states leave as numpy."""
        if self.system.model is None:
            raise RuntimeError("this pipeline was built without the MLLM (with_model=False); it cannot generate")
        t0 = time.perf_counter()
        gens = run_generation(
            self.system.model, self.processor, prepared, self.deployed_routes, self.logits_hook, self.format_decoding
        )
        elapsed = _ms(t0)
        return [
            GenerationResult(
                index=p.index,
                text=g.text,
                links=[
                    LinkRecord(e.route, int(e.position), e.phrase, e.states.detach().float().cpu().numpy())
                    for e in g.links
                ],
                finished=g.finished,
                elapsed_ms=elapsed,
            )
            for p, g in zip(prepared, gens, strict=True)
        ]

    # ---- stage 3: plan ----------------------------------------------------------------------
    def plan(
        self, prepared: Sequence[Prepared], generations: Sequence[GenerationResult]
    ) -> dict[str, list[DecoderCall]]:
        """Group link events by decoder across the whole batch (each decoder then runs once per route)."""
        by_index = {p.index: p for p in prepared}
        calls: dict[str, list[DecoderCall]] = defaultdict(list)
        for g in generations:
            p = by_index[g.index]
            for k, link in enumerate(g.links):
                name = self.system.table[link.route].decoder if link.route in self.system.table else "<unbound>"
                calls[name].append(
                    DecoderCall(
                        request=p.index,
                        event=k,
                        route=link.route,
                        phrase=link.phrase,
                        states=link.states,
                        image=p.images[0] if p.images else None,
                        image_index=0 if p.images else None,
                        options=p.options,
                    )
                )
        return dict(calls)

    # ---- stage 4: decoders ------------------------------------------------------------------
    @torch.no_grad()
    def run_decoder(self, decoder_name: str, calls: Sequence[DecoderCall]) -> list[DecoderResult]:
        """Project + decode every call for one decoder, one forward per route; aligned with `calls`.

        A route whose decoder fails or is not deployed yields results carrying a PartError.
        """
        out: list[DecoderResult | None] = [None] * len(calls)
        by_route: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(calls):
            by_route[c.route].append(i)
        for route, idx in by_route.items():
            for i, res in zip(idx, run_route(self.system, route, [calls[i] for i in idx]), strict=True):
                out[i] = res
        return [r for r in out if r is not None]

    def run_decoders(
        self,
        calls: Mapping[str, Sequence[DecoderCall]],
        timeout_s: float | None = None,
        timings: dict[str, float] | None = None,
        concurrent: bool = True,
    ) -> dict[str, list[DecoderResult]]:
        """Run every decoder's calls, concurrently by default; a decoder past the timeout gives PartErrors.

        `timings` receives each decoder's wall time in ms under its name.
        """
        timings = {} if timings is None else timings
        if not calls:
            return {}
        if not concurrent or len(calls) == 1:
            out = {name: self._timed(name, c, 0) for name, c in calls.items()}
        else:
            futures = {name: self._submit(name, c, len(calls)) for name, c in calls.items()}
            done, _ = wait(futures.values(), timeout=timeout_s)
            out = {}
            for name, fut in futures.items():
                if fut in done:
                    out[name] = fut.result()
                else:
                    fut.cancel()
                    msg = f"decoder {name!r} did not finish within {timeout_s} s"
                    out[name] = ([failed(c, "timeout", msg) for c in calls[name]], (timeout_s or 0) * 1000.0)
        for name, (_, elapsed) in out.items():
            timings[name] = elapsed
        return {name: res for name, (res, _) in out.items()}

    def _timed(self, name: str, calls: Sequence[DecoderCall], threads: int) -> Timed:
        t0 = time.perf_counter()
        with torch_threads(threads):
            res = self.run_decoder(name, calls)
        return res, _ms(t0)

    def _submit(self, name: str, calls: Sequence[DecoderCall], in_flight: int) -> Future[Timed]:
        """Queue one decoder's calls on its worker: a shared thread pool, or that decoder's own process."""
        return self._workers.submit(name, calls, self.config.runtime, len(self.system.decoders), in_flight)

    def close(self) -> None:
        """Stop the decoder workers (threads or processes); no worker outlives close()."""
        self._workers.close()

    # ---- stage 5: assemble ------------------------------------------------------------------
    def assemble(
        self,
        prepared: Sequence[Prepared],
        generations: Sequence[GenerationResult],
        results: Mapping[str, Sequence[DecoderResult]],
        timings: Mapping[str, float],
    ) -> list[Response]:
        flat = [r for rs in results.values() for r in rs]
        by_gen = {g.index: g for g in generations}
        return [
            assemble_response(p, by_gen[p.index], [r for r in flat if r.request == p.index], timings, self.config)
            for p in prepared
        ]


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _timeout(prepared: Sequence[Prepared]) -> float | None:
    limits = [p.options.timeout_s for p in prepared if p.options.timeout_s is not None]
    return min(limits) if limits else None


__all__ = ["Pipeline", "RequestError"]


# ---- prepare helpers ------------------------------------------------------------------------
def prepare_request(req: Request, index: int, config: SuperLinkConfig) -> Prepared:
    """Decode images (mllm.images.load_image), turn region prompts into masks, bind class slots, and read
    how locations are to be answered (boxes, or polygons of the requested point count)."""
    try:
        localization = localize_request(req.instruction)
    except LocalizeError as err:
        raise RequestError(f"request {index}: {err}") from None

    images = []
    for k, data in enumerate(req.images):
        try:
            images.append(np.array(load_image(data, config.model.max_image_pixels)))  # (H, W, 3) uint8
        except ImageError as err:
            raise RequestError(f"request {index}: images[{k}]: {err}") from None
    regions = [region_dict(r, images[r.image], index, k) for k, r in enumerate(req.regions)]
    return Prepared(
        index=index,
        instruction=req.instruction,
        images=images,
        regions=regions,
        options=req.options,
        classes=list(parse_class_list(req.instruction)),
        localize=localization.mode,
        polygon_points=localization.points,
    )


def region_dict(region: Any, image: np.ndarray, index: int, k: int) -> dict[str, Any]:
    """A RegionPrompt -> the processor's region dict, after checking it lies on its image."""
    h, w = image.shape[:2]
    out: dict[str, Any] = {"image": region.image}
    if region.mask is not None:
        if tuple(region.mask.size) != (h, w):
            raise RequestError(f"request {index}: regions[{k}].mask has size (h, w) {region.mask.size}, image is {(h, w)}")
        out["mask"] = {"size": list(region.mask.size), "counts": region.mask.counts}
        return out
    if region.scribble is not None:
        try:
            lines, width = check_scribble(region.scribble.lines, region.scribble.width, (w, h))
        except ScribbleError as err:
            raise RequestError(f"request {index}: regions[{k}]: {err}") from None
        out.update(scribble=lines, width=width)
        return out
    xy = region.box if region.box is not None else region.point
    for j, v in enumerate(xy):
        side = w if j % 2 == 0 else h
        if not 0.0 <= v <= side:
            raise RequestError(f"request {index}: regions[{k}] {list(xy)} lies outside its {w}x{h} image (pixels)")
    out["box" if region.box is not None else "point"] = tuple(float(v) for v in xy)
    return out


# ---- generation helpers -----------------------------------------------------------------------
def generation_groups(prepared: Sequence[Prepared]) -> list[list[int]]:
    """Positions of requests that can share one generate call (same decoding options)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(prepared):
        o = p.options
        groups[(o.max_new_tokens, o.do_sample, o.temperature, o.top_p)].append(i)
    return list(groups.values())


def route_ban_hook(model: Any, allowed: Sequence[Sequence[str]], extra: LogitsHook | None) -> LogitsHook:
    """A logits hook banning, per row, the routing tokens that row may not emit."""
    ids = model.token_ids.route  # route name -> token id
    banned = [[tid for name, tid in ids.items() if name not in set(a)] for a in allowed]

    def hook(step: int, logits: torch.Tensor) -> torch.Tensor:  # (B, V)
        if extra is not None:
            logits = extra(step, logits)
        for r, tids in enumerate(banned):
            if tids:
                logits[r, tids] = float("-inf")
        return logits

    return hook


def run_generation(
    model: Any,
    processor: Any,
    prepared: Sequence[Prepared],
    deployed_routes: Sequence[str],
    logits_hook: LogitsHook | None = None,
    format_decoding: bool | None = None,
) -> list[Any]:
    """mllm.generation.generate over the batch, one call per group of requests with equal decoding options.

    A polygon request decodes under its processor constraint, so each polygon has exactly the requested points.
    """
    sink = GENERATED_TEXT_SINK.get()
    out: list[Any] = [None] * len(prepared)
    for group in generation_groups(prepared):
        rows = [prepared[i] for i in group]
        try:
            batch = processor(
                [p.instruction for p in rows], images=[p.images for p in rows], regions=[p.regions for p in rows]
            )
        except ValueError as err:  # the processor's own validation (prompt too long, region counts, ...)
            raise RequestError(str(err)) from None
        device = next(model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        allowed = [[r.strip("[]") for r in p.options.routes] if p.options.routes is not None else deployed_routes for p in rows]
        o = rows[0].options
        constraints = [
            processor.decoding_constraint(LocalizeRequest(p.localize, p.polygon_points), len(p.classes)) for p in rows
        ]
        on_step = None if sink is None else _text_streamer(model, [p.index for p in rows], sink)
        gens = generate(
            model, batch, max_new_tokens=o.max_new_tokens, do_sample=o.do_sample, temperature=o.temperature,
            top_p=o.top_p, seeds=[p.options.seed for p in rows], logits_hook=route_ban_hook(model, allowed, logits_hook),
            constraints=constraints if any(c is not None for c in constraints) else None,
            format_decoding=format_decoding, on_step=on_step,
        )  # fmt: skip
        for i, g in zip(group, gens, strict=True):
            out[i] = g
    return out


def _text_streamer(model: Any, indices: Sequence[int], sink: Callable[[int, str], None]) -> Callable[[list[list[int]]], None]:
    """An on_step callback that hands `sink` each row's text (as GenerationResult.text spells it) when it grows."""
    lengths = [0] * len(indices)

    def on_step(ids: list[list[int]]) -> None:
        for r, row in enumerate(ids):
            if len(row) != lengths[r]:
                lengths[r] = len(row)
                sink(indices[r], decode_text(model, row))

    return on_step


def forced_answer_hook(tokenizer: Any, answers: Sequence[str]) -> LogitsHook:
    """A logits hook that makes row r generate `answers[r]` then eos (teacher forcing through generate).

    Routing tokens in the answers fire as usual, so their queries are fed and link events recorded:
    this is how tests and benchmarks drive a random-weight model through every route.
    """
    rows = [tokenizer(" " + a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]

    def hook(step: int, logits: torch.Tensor) -> torch.Tensor:  # (B, V)
        if logits.shape[0] != len(rows):
            raise ValueError(f"forced answers for {len(rows)} rows, but the batch has {logits.shape[0]}")
        forced = torch.full_like(logits, float("-inf"))
        for r, ids in enumerate(rows):
            forced[r, ids[min(step, len(ids) - 1)]] = 0.0
        return forced

    return hook
