"""Batched routed generation with the KV cache.

The prompt batch (left-padded) is prefilled once. Each step then feeds one chunk of
shape (B, L, D): a row that just sampled a routing token feeds that token's
embedding followed by the route's Q query embeddings (L = 1 + the largest Q among
such rows); every other row feeds its one new token. Rows shorter than L are padded
on the left of the chunk with masked slots: attention_mask 0, so no later token
attends to them, and position ids from the cumulative mask, so they do not advance
positions. The last column of the chunk is therefore every row's last real token,
and the next token of every row is predicted from it (for a routed row, from its
last query). The last-layer states at a routed row's Q query slots become a
LinkEvent. A row's tokens and link states do not depend on the other rows, so
batched output equals per-row output (states to float tolerance).

Sampling draws one uniform number per row and step from that row's own
torch.Generator, so a row samples the same tokens alone or in any batch.

Format queries (mllm.format_queries; when the model has them and `format_decoding` allows): the
prefill also runs the S x 5 slot queries, appended after the prompt (causal attention: the prompt's
own states are unchanged, the slots see the prompt alone, as in training); later tokens never attend
to them (their mask columns are zeroed). A row whose first token after leading spaces is a class slot
has begun a native box answer: its whole answer is read from its slot states, written as the same
token groups, and the row finishes without another forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from mllm.constraints import RowConstraint, apply_constraints
from mllm.format_queries import FormatTokenIds, decode_slots, slot_logits, slots_text
from mllm.types import Generation, LinkEvent
from mllm.vocab import phrase_before

if TYPE_CHECKING:
    from mllm.modeling import SuperLinkModel

LogitsHook = Callable[[int, torch.Tensor], torch.Tensor]  # (step, logits (B, V)) -> logits (B, V)


class GenerationInputError(ValueError):
    """Bad arguments to generate(); the message says what is accepted."""


@dataclass
class RowState:
    """Bookkeeping for one row: what it generated and which route, if any, it feeds next."""

    token_ids: list[int] = field(default_factory=list)
    links: list[LinkEvent] = field(default_factory=list)
    pending_route: str | None = None  # sampled a routing token; its queries go in the next chunk
    finished: bool = False


@dataclass
class Chunk:
    embeds: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L) long, 0 on pad slots
    routed: dict[int, str]  # row -> route whose queries fill the chunk's last Q slots


@torch.no_grad()
def generate(
    model: SuperLinkModel,
    batch: Mapping[str, Any],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seeds: list[int | None] | None = None,
    allowed_routes: set[str] | None = None,
    eos_token_id: int | None = None,
    logits_hook: LogitsHook | None = None,
    constraints: Sequence[RowConstraint | None] | None = None,
    format_decoding: bool | None = None,
    on_step: Callable[[list[list[int]]], None] | None = None,
) -> list[Generation]:
    """Generate for every row of a processor batch (input_ids (B, T) left-padded, attention_mask, and
    optionally pixel_values, region_masks, region_image_index). `allowed_routes` None allows all routes;
    `constraints` (one per row, or None) keep a row's answer in its format (mllm.constraints, e.g. N-point
    polygons); `logits_hook` may edit the (B, V) logits of each step after them (tests force routes with it).
    `format_decoding` None reads native box answers from the format queries when the model has them (rows
    under a constraint, e.g. polygons, always go token by token); False always decodes token by token.
    `on_step`, when given, sees every row's generated ids after each step (streaming; read, don't modify)."""
    check_options(max_new_tokens, do_sample, temperature, top_p)
    eos = model.token_ids.eos if eos_token_id is None else eos_token_id
    batch_size = batch["input_ids"].shape[0]
    rows = [RowState() for _ in range(batch_size)]
    route_of = {tid: name for name, tid in model.token_ids.route.items()}
    format_ids = FormatTokenIds.of(model) if model.format_queries is not None and format_decoding is not False else None
    cache, mask, logits, slot_states = prefill(model, batch, with_slots=format_ids is not None)
    banned = banned_tokens(model, allowed_routes).to(logits.device)  # (V,) bool
    uniforms = row_uniforms(seeds, batch_size, max_new_tokens, logits.device) if do_sample else None  # (B, N)
    for step in range(max_new_tokens):
        logits = logits.masked_fill(banned, float("-inf"))
        if constraints is not None:
            logits = apply_constraints(constraints, [r.token_ids for r in rows], [r.finished for r in rows],
                                       logits, max_new_tokens - step)  # fmt: skip
        if logits_hook is not None:
            logits = logits_hook(step, logits)
        next_ids = choose_tokens(logits, step, uniforms, temperature, top_p)  # (B,)
        formatted = format_rows(model, rows, next_ids, format_ids, constraints) if format_ids is not None else []
        record_tokens(rows, next_ids.tolist(), route_of, eos, skip=formatted)
        if formatted:
            finish_from_slots(model, rows, formatted, slot_states, format_ids, eos)
        if on_step is not None:
            on_step([r.token_ids for r in rows])
        if all(r.finished for r in rows) or (step == max_new_tokens - 1 and not any_pending(rows)):
            break
        chunk = build_chunk(model, next_ids, rows)
        mask = torch.cat([mask, chunk.mask], dim=1)  # (B, past + L)
        hidden = model.run_llm(chunk.embeds, mask, cache=cache).last_hidden_state  # (B, L, D)
        record_links(model, rows, chunk, hidden)
        logits = model.lm_logits(hidden[:, -1])  # (B, V)
    return [finish_row(model, r) for r in rows]


def check_options(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise GenerationInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise GenerationInputError(f"temperature must be > 0 when sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise GenerationInputError(f"top_p must be in (0, 1], got {top_p}")


def prefill(
    model: SuperLinkModel, batch: Mapping[str, Any], with_slots: bool = False
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the whole prompt once: the cache, the attention mask (B, T), the last prompt logits (B, V), and
    with_slots the format-query states (B, S * 5, D) of slots appended after the prompt (masked afterwards)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if ids.dim() != 2 or mask.shape != ids.shape:
        raise GenerationInputError(f"input_ids and attention_mask must both be (B, T); got {tuple(ids.shape)}, "
                                   f"{tuple(mask.shape)}")  # fmt: skip
    if not bool(mask[:, -1].all()):
        raise GenerationInputError("prompts must be left-padded (attention_mask[:, -1] all 1) for generation")
    embeds = model.prepare_embeds(
        ids, batch.get("pixel_values"), batch.get("region_masks"), batch.get("region_image_index")
    )  # (B, T, D)
    cache = DynamicCache(config=model.llava.config.text_config)
    mask = mask.long()
    if not with_slots:
        hidden = model.run_llm(embeds, mask, cache=cache).last_hidden_state  # (B, T, D)
        return cache, mask, model.lm_logits(hidden[:, -1]), None
    slots = model.format_queries.embeddings().to(embeds.dtype)  # (S * 5, D)
    embeds = torch.cat([embeds, slots.expand(len(embeds), -1, -1)], dim=1)  # (B, T + S * 5, D)
    mask = torch.cat([mask, mask.new_ones(len(mask), len(slots))], dim=1)
    hidden = model.run_llm(embeds, mask, cache=cache).last_hidden_state  # (B, T + S * 5, D)
    mask[:, -len(slots) :] = 0  # answer tokens never attend to the slots (and positions skip them)
    t = ids.shape[1]
    return cache, mask, model.lm_logits(hidden[:, t - 1]), hidden[:, t:]


def banned_tokens(model: SuperLinkModel, allowed_routes: set[str] | None) -> torch.Tensor:
    """(V,) bool: routing tokens outside `allowed_routes`, and tokens that are never generated
    (query placeholders are fed as embeddings; <image>, <region> and <pad> only come from the processor)."""
    ids = model.token_ids
    known = set(ids.route)
    if allowed_routes is not None and not allowed_routes <= known:
        raise GenerationInputError(
            f"unknown routes {sorted(allowed_routes - known)}; declared: {sorted(known)}"
        )
    allowed = known if allowed_routes is None else allowed_routes
    banned = [tid for name, tid in ids.route.items() if name not in allowed]
    banned += [*ids.placeholder.values(), ids.image, ids.region, ids.pad]
    vocab_size = model.llava.get_output_embeddings().weight.shape[0]
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[banned] = True
    return mask


def row_uniforms(
    seeds: list[int | None] | None, batch_size: int, steps: int, device: torch.device
) -> torch.Tensor:
    """(B, steps) uniforms in [0, 1), row r drawn from its own generator (seeded from seeds[r])."""
    if seeds is not None and len(seeds) != batch_size:
        raise GenerationInputError(f"seeds has {len(seeds)} entries for a batch of {batch_size} rows")
    rows = []
    for r in range(batch_size):
        gen = torch.Generator()
        seed = seeds[r] if seeds is not None else None
        gen.manual_seed(seed) if seed is not None else gen.seed()
        rows.append(torch.rand(steps, generator=gen, dtype=torch.float64))
    return torch.stack(rows).to(device)


def choose_tokens(
    logits: torch.Tensor, step: int, uniforms: torch.Tensor | None, temperature: float, top_p: float
) -> torch.Tensor:
    """(B, V) logits -> (B,) ids: argmax, or inverse-CDF sampling with each row's own uniform."""
    if uniforms is None:
        return logits.argmax(-1)
    scores = TemperatureLogitsWarper(temperature)(None, logits.float())
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    cdf = scores.softmax(-1).double().cumsum(-1)  # (B, V)
    target = uniforms[:, step : step + 1] * cdf[:, -1:]  # (B, 1), below the total mass
    # First index whose cdf exceeds the target; a zero-probability token never is.
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)


def record_tokens(
    rows: list[RowState], next_ids: list[int], route_of: dict[int, str], eos: int, skip: Sequence[int] = ()
) -> None:
    """The state machine: append each live row's token; eos finishes it, a routing token queues its queries.
    Rows in `skip` answer from their format slots: their token is not kept."""
    for r, (row, tid) in enumerate(zip(rows, next_ids, strict=True)):
        row.pending_route = None
        if row.finished or r in skip:
            continue
        row.token_ids.append(tid)
        if tid == eos:
            row.finished = True
        else:
            row.pending_route = route_of.get(tid)


def format_rows(
    model: SuperLinkModel,
    rows: list[RowState],
    next_ids: torch.Tensor,
    ids: FormatTokenIds,
    constraints: Sequence[RowConstraint | None] | None = None,
) -> list[int]:
    """Rows that begin a native box answer now: a class slot as their first token after leading spaces
    (answers are encoded after a space, so the first token is often a bare space). A constrained row (a
    polygon request) keeps its own format and is never switched to the box slots."""
    is_class = torch.isin(next_ids, torch.tensor(ids.classes[:-1], device=next_ids.device)).tolist()
    free = [True] * len(rows) if constraints is None else [c is None for c in constraints]
    return [
        r for r, (row, hit) in enumerate(zip(rows, is_class, strict=True))
        if hit and free[r] and not row.finished and not model.tokenizer.decode(row.token_ids).strip()
    ]  # fmt: skip


def finish_from_slots(
    model: SuperLinkModel, rows: list[RowState], formatted: list[int], slot_states: torch.Tensor,
    ids: FormatTokenIds, eos: int,
) -> None:  # fmt: skip
    """Write each formatted row's answer from its slot states (B, S * 5, D) and finish the row."""
    logits = slot_logits(model, slot_states[formatted], ids)
    for r, slots in zip(formatted, decode_slots(logits), strict=True):
        rows[r].token_ids = model.tokenizer(" " + slots_text(slots), add_special_tokens=False)["input_ids"] + [eos]
        rows[r].finished = True


def any_pending(rows: list[RowState]) -> bool:
    return any(r.pending_route is not None for r in rows)


def build_chunk(model: SuperLinkModel, next_ids: torch.Tensor, rows: list[RowState]) -> Chunk:
    """(B, L, D) inputs for the next step: the new token in the last column, or for a routed row the
    routing token followed by its Q queries in the last Q + 1 columns; masked pad slots before."""
    routed = {r: row.pending_route for r, row in enumerate(rows) if row.pending_route is not None}
    width = 1 + max((model.queries[name].num_embeddings for name in routed.values()), default=0)
    token_embeds = model.embed_inputs(next_ids[:, None])[:, 0]  # (B, D)
    embeds = token_embeds.new_zeros(len(rows), width, token_embeds.shape[-1])  # (B, L, D)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=embeds.device)
    embeds[:, -1] = token_embeds
    mask[:, -1] = 1
    for r, name in routed.items():  # only rows that fired a route this step
        table = model.queries[name].weight  # (Q, D)
        q = table.shape[0]
        embeds[r, -q - 1] = token_embeds[r]
        embeds[r, -q:] = table.to(embeds.dtype)
        mask[r, -q - 1 :] = 1
    return Chunk(embeds=embeds, mask=mask, routed=routed)


def record_links(model: SuperLinkModel, rows: list[RowState], chunk: Chunk, hidden: torch.Tensor) -> None:
    """A LinkEvent per routed row: states at its Q query slots, and the phrase before the routing token."""
    for r, name in chunk.routed.items():
        q = model.queries[name].num_embeddings
        row = rows[r]
        position = len(row.token_ids) - 1  # the routing token is the row's latest token
        prefix = decode_text(model, row.token_ids[:position])
        states = hidden[r, -q:].clone()  # (Q, D)
        row.links.append(
            LinkEvent(route=name, row=r, position=position, states=states, phrase=phrase_before(prefix))
        )


def decode_text(model: SuperLinkModel, token_ids: list[int]) -> str:
    """Text with routing, class and location tokens kept; eos, bos and pad dropped."""
    ids = model.token_ids
    drop = {ids.eos, ids.bos, ids.pad, *ids.placeholder.values()}
    return model.tokenizer.decode([t for t in token_ids if t not in drop], skip_special_tokens=False)


def finish_row(model: SuperLinkModel, row: RowState) -> Generation:
    return Generation(
        text=decode_text(model, row.token_ids),
        token_ids=row.token_ids,
        links=row.links,
        finished=row.finished,
    )
