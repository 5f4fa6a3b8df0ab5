"""Structured decoding: per-row constraints that mask the logits so an answer keeps its format.

A polygon request ("outline each star with a 12-point polygon") is answered as class slots each
followed by 2N location tokens. `PolygonConstraint` makes that exact while the model still picks
every token:

- right after a class slot, and until 2N location tokens have followed it, only location tokens;
- after the 2N-th, no further location token (the group is closed; the separator or eos comes next);
- elsewhere no location token (in a polygon answer they only follow a class slot), only the class
  slots the request bound, and no new class slot once the remaining token budget cannot hold
  a whole polygon, so a cut-off answer never ends in a short polygon.

`apply_constraints` is called by `mllm.generation.generate` once per step, before any logits hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class PolygonConstraint:
    points: int  # N: every polygon gets exactly N (x, y) points
    loc_ids: Sequence[int]  # ids of <loc_0> ... <loc_{B-1}>
    cls_ids: Sequence[int]  # ids of <cls_0> ... <cls_{K-1}>
    bound: int | None = None  # class slots the request bound (cls_0 .. cls_{bound-1}); None: any
    _masks: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.points < 1:
            raise ValueError(f"a polygon constraint needs points >= 1, got {self.points}")
        self._loc = frozenset(int(i) for i in self.loc_ids)
        self._cls = frozenset(int(i) for i in self.cls_ids)

    @property
    def group_length(self) -> int:
        """Tokens of one polygon: its class slot and 2N location tokens."""
        return 1 + 2 * self.points

    def locs_in_open_group(self, token_ids: Sequence[int]) -> int | None:
        """How many location tokens follow the row's last class slot, when nothing else does; else None."""
        n = 0
        for tok in reversed(token_ids):
            if tok in self._loc:
                n += 1
            elif tok in self._cls:
                return n
            else:
                return None
        return None

    def masks(self, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(V,) bool masks: location tokens, every class slot, class slots the request did not bind."""
        key = (vocab_size, device)
        if key not in self._masks:
            loc = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            loc[list(self._loc)] = True
            cls = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            cls[list(self._cls)] = True
            unbound = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if self.bound is not None:
                unbound[[int(i) for i in self.cls_ids[self.bound :]]] = True
            self._masks[key] = (loc, cls, unbound)
        return self._masks[key]

    def apply(self, logits: torch.Tensor, token_ids: Sequence[int], remaining: int) -> torch.Tensor:
        """One row's (V,) logits, masked for the next token; `remaining` counts this step's token too."""
        loc, cls, unbound = self.masks(logits.shape[-1], logits.device)
        inside = self.locs_in_open_group(token_ids)
        if inside is not None and inside < 2 * self.points:
            return logits.masked_fill(~loc, float("-inf"))
        banned = loc | unbound
        if remaining < self.group_length:
            banned = banned | cls
        return logits.masked_fill(banned, float("-inf"))


RowConstraint = PolygonConstraint


def apply_constraints(
    constraints: Sequence[RowConstraint | None],
    token_ids: Sequence[Sequence[int]],
    finished: Sequence[bool],
    logits: torch.Tensor,
    remaining: int,
) -> torch.Tensor:
    """(B, V) logits with each live row's constraint applied (rows without one are left as they are)."""
    if len(constraints) != logits.shape[0]:
        raise ValueError(f"{len(constraints)} row constraints for a batch of {logits.shape[0]} rows")
    out = logits.clone()
    for r, c in enumerate(constraints):
        if c is not None and not finished[r]:
            out[r] = c.apply(out[r], token_ids[r], remaining)
    return out
