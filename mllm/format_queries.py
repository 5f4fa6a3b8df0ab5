"""Output-format-as-query parallel decoding of native boxes (VisionLLM v1, section 3.3).

A native-detection answer is a set of "<cls_k><loc_x1><loc_y1><loc_x2><loc_y2>" groups. Decoded token by
token it costs one LLM forward pass per token (five per box, plus separators). Here the output format
itself is the query: S learned slots, each five positions (class, x1, y1, x2, y2), are appended after
the prompt and read out in ONE forward pass. Each position's last-layer state goes through the LM head,
restricted to the tokens that fit its role: the class position to the K class slots plus "no object"
(the eos token's row), a coordinate position to the B location tokens. So both modes share the
vocabulary, the codec and the answer text: the slots are written back as the same token groups, and
the pipeline turns them into the same native-box items.

Training matches slots to the ground-truth boxes of each sample with the Hungarian algorithm
(scipy.optimize.linear_sum_assignment), as DETR and VisionLLM v1 do, and applies class CE (no-object for
unmatched slots, down-weighted) plus location-token CE and an L1 between the expected and target
coordinates of matched slots.

At generation time the LLM still chooses the format: a row whose first token is a class slot (the start of
a native box answer) switches to the slots; any other answer goes on token by token (mllm.generation).
The slot queries attend to the prompt only (they are fed right after it, before any answer token).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from mllm.vocab import cls_token, loc_token

if TYPE_CHECKING:
    from mllm.config import FormatQueryConfig
    from mllm.modeling import SuperLinkModel

ROLES = ("cls", "x1", "y1", "x2", "y2")  # the positions of one slot, in answer order
IGNORE_INDEX = -100
# One native box group of an answer: class slot, then exactly four location tokens (not a polygon's first four).
_BOX_RE = re.compile(r"<cls_(\d+)>\s*<loc_(\d+)>\s*<loc_(\d+)>\s*<loc_(\d+)>\s*<loc_(\d+)>(?!\s*<loc_)")

BoxTarget = tuple[int, tuple[int, int, int, int]]  # (class slot, (x1, y1, x2, y2) bins)


class FormatQueryError(ValueError):
    """Bad input to format-query decoding or its loss; the message says what is accepted."""


class FormatQueries(nn.Module):
    """S slots x 5 roles of query embeddings: slot row + role row, so every slot shares the role layout."""

    def __init__(self, slots: int, hidden: int, std: float = 0.02) -> None:
        super().__init__()
        self.slots = nn.Embedding(slots, hidden)
        self.roles = nn.Embedding(len(ROLES), hidden)
        nn.init.normal_(self.slots.weight, std=std)
        nn.init.normal_(self.roles.weight, std=std)

    @property
    def num_slots(self) -> int:
        return self.slots.num_embeddings

    @property
    def num_positions(self) -> int:
        return self.num_slots * len(ROLES)

    def embeddings(self) -> torch.Tensor:
        """(S * 5, D): slot-major, role-minor (slot 0 cls, x1, y1, x2, y2, slot 1 cls, ...)."""
        return (self.slots.weight[:, None] + self.roles.weight[None]).flatten(0, 1)


@dataclass(frozen=True)
class FormatTokenIds:
    """The vocabulary rows a slot reads: K class slots + no-object (eos), and B location bins."""

    classes: list[int]  # K ids of <cls_0> ... <cls_{K-1}>, then the eos id (no object) last
    locations: list[int]  # B ids of <loc_0> ... <loc_{B-1}>

    @classmethod
    def of(cls, model: SuperLinkModel) -> FormatTokenIds:
        ids = model.tokenizer.convert_tokens_to_ids
        vocab = model.vocab
        classes = [ids(cls_token(k)) for k in range(vocab.class_slots)] + [model.token_ids.eos]
        return cls(classes=classes, locations=[ids(loc_token(b)) for b in range(vocab.location_bins)])

    @property
    def no_object(self) -> int:
        """Index of "no object" among the class choices."""
        return len(self.classes) - 1


@dataclass
class SlotLogits:
    classes: torch.Tensor  # (N, S, K + 1), the last column is "no object"
    locations: torch.Tensor  # (N, S, 4, B)


def slot_logits(model: SuperLinkModel, hidden: torch.Tensor, ids: FormatTokenIds | None = None) -> SlotLogits:
    """Last-layer states at the slot positions (N, S * 5, D) -> class and location logits per slot."""
    ids = ids or FormatTokenIds.of(model)
    head = model.llava.get_output_embeddings()
    n, length, d = hidden.shape
    if length % len(ROLES):
        raise FormatQueryError(f"slot states must hold 5 positions per slot, got {length}")
    states = hidden.view(n, length // len(ROLES), len(ROLES), d)  # (N, S, 5, D)
    bias = head.bias if getattr(head, "bias", None) is not None else None

    def rows(index: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = torch.tensor(index, device=hidden.device)
        return head.weight[t], None if bias is None else bias[t]

    w_cls, b_cls = rows(ids.classes)
    w_loc, b_loc = rows(ids.locations)
    return SlotLogits(
        classes=F.linear(states[:, :, 0], w_cls, b_cls).float(),  # (N, S, K + 1)
        locations=F.linear(states[:, :, 1:], w_loc, b_loc).float(),  # (N, S, 4, B)
    )


# ---- forward over prompt + slots ---------------------------------------------------------------
def run_slots(model: SuperLinkModel, inputs: Mapping[str, Any]) -> torch.Tensor:
    """Prompt batch (input_ids (B, T) left-padded, attention_mask, pixel_values, ...) with the slots appended
    after it, in one forward pass -> last-layer states at the slots (B, S * 5, D)."""
    table = require_table(model)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    embeds = model.prepare_embeds(
        ids, inputs.get("pixel_values"), inputs.get("region_masks"), inputs.get("region_image_index")
    )  # (B, T, D)
    queries = table.embeddings().to(embeds.dtype)  # (S * 5, D)
    embeds = torch.cat([embeds, queries.expand(len(ids), -1, -1)], dim=1)  # (B, T + S * 5, D)
    mask = torch.cat([mask, mask.new_ones(len(ids), queries.shape[0])], dim=1)
    hidden = model.run_llm(embeds, mask).last_hidden_state
    return hidden[:, -queries.shape[0] :]


def require_table(model: SuperLinkModel) -> FormatQueries:
    if model.format_queries is None:
        raise FormatQueryError(
            "this model has no format queries; set model.format_queries in its config (e.g. {slots: 16}) to use them"
        )
    return model.format_queries


def prompt_rows(inputs: Mapping[str, Any], rows: Sequence[int], pad_id: int, region_id: int) -> dict[str, Any]:
    """The prompt part (before the first labelled token) of the selected rows of a training batch,
    left-padded again, with their images and region masks: what generation would see."""
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    prompts = []
    for r in rows:
        answered = (labels[r] != IGNORE_INDEX).nonzero()
        end = int(answered[0]) if len(answered) else ids.shape[1]
        prompts.append(ids[r, :end][mask[r, :end].bool()])
    width = max(len(p) for p in prompts)
    new_ids = ids.new_full((len(rows), width), pad_id)
    new_mask = mask.new_zeros((len(rows), width))
    for i, p in enumerate(prompts):
        new_ids[i, width - len(p) :] = p
        new_mask[i, width - len(p) :] = 1
    out: dict[str, Any] = {"input_ids": new_ids, "attention_mask": new_mask}
    out.update(_images_of_rows(inputs, rows, ids, region_id))
    return out


def _images_of_rows(inputs: Mapping[str, Any], rows: Sequence[int], ids: torch.Tensor, region_id: int) -> dict:
    """pixel_values, region_masks and region_image_index restricted to `rows` (images renumbered)."""
    pixels = inputs.get("pixel_values")
    if pixels is None:
        return {}
    per_row = list(inputs["images_per_row"])
    starts = np.cumsum([0, *per_row])
    keep = [k for r in rows for k in range(starts[r], starts[r + 1])]
    out: dict[str, Any] = {"pixel_values": pixels[keep]}
    masks = inputs.get("region_masks")
    if masks is not None:
        per_row_regions = (ids == region_id).sum(1).tolist()
        rstarts = np.cumsum([0, *per_row_regions])
        reg = [k for r in rows for k in range(rstarts[r], rstarts[r + 1])]
        if reg:
            renumber = {old: new for new, old in enumerate(keep)}
            out["region_masks"] = masks[reg]
            out["region_image_index"] = torch.tensor(
                [renumber[int(i)] for i in inputs["region_image_index"][reg]], device=masks.device
            )
    return out


# ---- targets, matching and the set loss --------------------------------------------------------
def box_targets(answer: str) -> list[BoxTarget]:
    """Every native box group of an answer text, in order: [(class slot, (x1, y1, x2, y2) bins), ...]."""
    return [(int(m.group(1)), tuple(int(m.group(k)) for k in range(2, 6))) for m in _BOX_RE.finditer(answer)]


def expected_coords(loc_logits: torch.Tensor) -> torch.Tensor:
    """(..., B) location logits -> (...) expected normalised coordinate (bin centres weighted by probability)."""
    bins = loc_logits.shape[-1]
    centres = (torch.arange(bins, device=loc_logits.device, dtype=torch.float32) + 0.5) / bins
    return loc_logits.float().softmax(-1) @ centres


def match_slots(logits: SlotLogits, index: int, targets: Sequence[BoxTarget], l1_weight: float) -> tuple[list[int], list[int]]:
    """Hungarian matching of one sample's slots to its targets: (slot indices, target indices)."""
    if not targets:
        return [], []
    with torch.no_grad():
        cls_lp = logits.classes[index].log_softmax(-1)  # (S, K + 1)
        loc_lp = logits.locations[index].log_softmax(-1)  # (S, 4, B)
        tgt_cls = torch.tensor([c for c, _ in targets], device=cls_lp.device)  # (M,)
        tgt_bins = torch.tensor([b for _, b in targets], device=cls_lp.device)  # (M, 4)
        # cost[s, m] = -log p(class_m) - mean_j log p(bin_mj) + l1 * |E[coord] - target|
        cost_cls = -cls_lp[:, tgt_cls]  # (S, M)
        gathered = loc_lp[:, None].expand(-1, len(targets), -1, -1).gather(
            -1, tgt_bins[None, :, :, None].expand(loc_lp.shape[0], -1, -1, 1)
        )[..., 0]  # (S, M, 4)
        cost_loc = -gathered.mean(-1)
        bins = loc_lp.shape[-1]
        coords = expected_coords(logits.locations[index])  # (S, 4)
        cost_l1 = (coords[:, None] - (tgt_bins[None].float() + 0.5) / bins).abs().sum(-1)  # (S, M)
        cost = (cost_cls + cost_loc + l1_weight * cost_l1).cpu().numpy()
    slots, objs = linear_sum_assignment(cost)
    return slots.tolist(), objs.tolist()


def set_loss(logits: SlotLogits, targets: Sequence[Sequence[BoxTarget]], config: FormatQueryConfig) -> torch.Tensor:
    """Set-matching loss over a batch: class CE on every slot (no-object for unmatched ones, weighted by
    no_object_weight) + location-token CE and coordinate L1 on matched slots. Scalar."""
    n, s, n_cls = logits.classes.shape
    bins = logits.locations.shape[-1]
    if len(targets) != n:
        raise FormatQueryError(f"{len(targets)} target lists for {n} rows of slot logits")
    too_many = [len(t) for t in targets if len(t) > s]
    if too_many:
        raise FormatQueryError(f"an answer holds {max(too_many)} boxes but the model has {s} format slots")
    no_object = n_cls - 1
    cls_target = torch.full((n, s), no_object, dtype=torch.long, device=logits.classes.device)
    loc_target = torch.full((n, s, 4), IGNORE_INDEX, dtype=torch.long, device=logits.classes.device)
    for i, tgt in enumerate(targets):
        slots, objs = match_slots(logits, i, tgt, config.l1_weight)
        for slot, obj in zip(slots, objs, strict=True):
            cls_target[i, slot] = tgt[obj][0]
            loc_target[i, slot] = torch.tensor(tgt[obj][1])
    weight = torch.ones(n_cls, device=logits.classes.device)
    weight[no_object] = config.no_object_weight
    loss = F.cross_entropy(logits.classes.reshape(-1, n_cls), cls_target.reshape(-1), weight=weight)
    matched = loc_target[..., 0] != IGNORE_INDEX  # (N, S)
    if matched.any():
        loc = logits.locations[matched]  # (M_all, 4, B)
        tgt = loc_target[matched]  # (M_all, 4)
        loss = loss + F.cross_entropy(loc.reshape(-1, bins), tgt.reshape(-1))
        coords = expected_coords(loc)  # (M_all, 4)
        loss = loss + config.l1_weight * (coords - (tgt.float() + 0.5) / bins).abs().sum(-1).mean()
    return loss


def format_loss(
    model: SuperLinkModel, inputs: Mapping[str, Any], rows: Sequence[int], answers: Sequence[str]
) -> torch.Tensor:
    """The set loss of the selected rows of a training batch (their answers hold native box groups)."""
    cfg = model.config.format_queries
    if cfg is None:
        raise FormatQueryError("format_loss needs a model with format queries (model.format_queries in its config)")
    prompt = prompt_rows(inputs, rows, model.token_ids.pad, model.token_ids.region)
    logits = slot_logits(model, run_slots(model, prompt))
    return set_loss(logits, [box_targets(a) for a in answers], cfg)


# ---- decoding ---------------------------------------------------------------------------------
@dataclass
class Slot:
    cls: int  # class slot k
    bins: tuple[int, int, int, int]  # x1, y1, x2, y2 location bins
    score: float  # probability of the class


def decode_slots(logits: SlotLogits) -> list[list[Slot]]:
    """Per row, the slots whose most likely class is not "no object", most confident first.

    x2 is the most likely bin at or after x1 (y2 likewise), so every box is well formed, as the
    autoregressive decoder's constrained reading of a box would be."""
    probs = logits.classes.softmax(-1)  # (N, S, K + 1)
    score, cls = probs.max(-1)
    loc = logits.locations  # (N, S, 4, B)
    bins = loc.shape[-1]
    first = loc[:, :, :2].argmax(-1)  # (N, S, 2): x1, y1
    after = torch.arange(bins, device=loc.device) >= first[..., None]  # (N, S, 2, B)
    second = loc[:, :, 2:].masked_fill(~after, float("-inf")).argmax(-1)  # (N, S, 2): x2, y2
    no_object = probs.shape[-1] - 1
    out = []
    for i in range(len(cls)):
        slots = [
            Slot(int(cls[i, s]), (int(first[i, s, 0]), int(first[i, s, 1]), int(second[i, s, 0]), int(second[i, s, 1])),
                 float(score[i, s]))
            for s in range(cls.shape[1])
            if int(cls[i, s]) != no_object
        ]  # fmt: skip
        out.append(sorted(slots, key=lambda sl: -sl.score))
    return out


def slots_text(slots: Sequence[Slot]) -> str:
    """The autoregressive answer the slots stand for: "<cls_k><loc_..>x4, ... ." or "none." when empty."""
    groups = [cls_token(sl.cls) + "".join(loc_token(b) for b in sl.bins) for sl in slots]
    return (", ".join(groups) if groups else "none") + "."
