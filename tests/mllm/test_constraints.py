"""Structured decoding: the polygon constraint lets through exactly 2N location tokens after each class slot."""

from __future__ import annotations

import pytest
import torch

from mllm.constraints import PolygonConstraint, apply_constraints

LOC = list(range(10, 20))  # ten location token ids
CLS = [5, 6, 7]  # three class slots
TEXT, EOS = 1, 2
V = 24


def allowed(c: PolygonConstraint, tokens: list[int], remaining: int = 100) -> set[int]:
    out = c.apply(torch.zeros(V), tokens, remaining)
    return {i for i in range(V) if out[i] > float("-inf")}


def test_inside_a_group_only_location_tokens_until_2n():
    c = PolygonConstraint(points=3, loc_ids=LOC, cls_ids=CLS, bound=2)
    assert allowed(c, [TEXT, 5]) == set(LOC)
    assert allowed(c, [TEXT, 5, 10, 11, 12, 13, 14]) == set(LOC)  # 5 of 6
    closed = allowed(c, [TEXT, 5, 10, 11, 12, 13, 14, 15])  # 6 of 6: the group is closed
    assert not closed & set(LOC) and {TEXT, EOS, 5, 6} <= closed


def test_outside_a_group_no_location_tokens_and_only_bound_slots():
    c = PolygonConstraint(points=3, loc_ids=LOC, cls_ids=CLS, bound=2)
    free = allowed(c, [TEXT])
    assert not free & set(LOC) and 7 not in free and {5, 6, TEXT, EOS} <= free
    assert 7 in allowed(PolygonConstraint(3, LOC, CLS, bound=None), [TEXT])  # nothing bound: every slot


def test_no_new_polygon_when_the_budget_cannot_hold_one():
    c = PolygonConstraint(points=3, loc_ids=LOC, cls_ids=CLS)
    assert 5 in allowed(c, [TEXT], remaining=7)  # class slot + 6 locations fit
    assert not allowed(c, [TEXT], remaining=6) & set(CLS)


def test_apply_constraints_skips_rows_without_one_and_finished_rows():
    c = PolygonConstraint(points=3, loc_ids=LOC, cls_ids=CLS)
    logits = torch.zeros(3, V)
    out = apply_constraints([c, None, c], [[5], [5], [5]], [False, False, True], logits, 50)
    assert torch.isinf(out[0]).sum() == V - len(LOC)
    assert not torch.isinf(out[1:]).any()
    with pytest.raises(ValueError, match="2 row constraints for a batch of 3"):
        apply_constraints([c, c], [[], [], []], [False] * 3, logits, 5)
    with pytest.raises(ValueError, match="points >= 1"):
        PolygonConstraint(points=0, loc_ids=LOC, cls_ids=CLS)
