"""Task metrics: the reference scores 1.0, a perturbation scores strictly lower."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from evaluation.metrics import (
    caption_f1,
    caption_facts,
    editing_accuracy,
    generation_accuracy,
    grounding_acc50,
    iou_xyxy,
    normalize_answer,
    object_f1,
    routing_accuracy,
    vqa_accuracy,
)


@dataclass
class Obj:  # the fields OracleObject / scene objects expose
    kind: str
    color: str
    box: tuple[float, float, float, float] = (0, 0, 10, 10)


# ---- boxes --------------------------------------------------------------------------------


def test_iou_xyxy_pairwise_values() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = iou_xyxy(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], 0.0)  # a degenerate box overlaps nothing


def test_grounding_acc50() -> None:
    gt = [(0, 0, 10, 10), (20, 20, 40, 40), (5, 5, 15, 25)]
    assert grounding_acc50(gt, gt) == 1.0
    shifted = [(0, 0, 10, 10), (30, 30, 50, 50), (5, 5, 15, 25)]  # IoU 1/7 for the second
    assert grounding_acc50(shifted, gt) == pytest.approx(2 / 3)
    assert grounding_acc50([None, gt[1], []], gt) == pytest.approx(1 / 3)  # missing counts as wrong
    with pytest.raises(ValueError, match="pair up"):
        grounding_acc50(gt[:2], gt)


# ---- VQA ----------------------------------------------------------------------------------


def test_normalize_answer() -> None:
    assert normalize_answer("The Three.") == "3"
    assert normalize_answer("  a Red   circle! ") == "red circle"
    assert normalize_answer("3") == normalize_answer("three")


def test_vqa_accuracy() -> None:
    answers = ["3", "red", "yes", ["left", "on the left"]]
    assert vqa_accuracy(["three", "Red.", "Yes", "On the left"], answers) == 1.0
    assert vqa_accuracy(["two", "red", "no", "left"], answers) == 0.5
    with pytest.raises(ValueError, match="no samples"):
        vqa_accuracy([], [])


# ---- captions -----------------------------------------------------------------------------

SCENE = [Obj("circle", "red"), Obj("square", "blue"), Obj("square", "blue"), Obj("cross", "green")]


def test_caption_facts_parse_counts_colours_and_plurals() -> None:
    facts = caption_facts("Two small blue squares, a red circle and 1 green cross.")
    assert facts == {
        ("color", "blue"), ("color", "red"), ("color", "green"),
        ("kind", "square"), ("kind", "circle"), ("kind", "cross"),
        ("count", "blue", "square", 2), ("count", "red", "circle", 1), ("count", "green", "cross", 1),
    }  # fmt: skip
    assert caption_facts("some crosses") == {("kind", "cross")}  # no count, no count fact


def test_caption_f1_perfect_and_perturbed() -> None:
    good = "A red circle, two blue squares and a green cross."
    assert caption_f1([good], [SCENE]) == 1.0
    assert caption_f1([good], [{"objects": [o.__dict__ for o in SCENE]}]) == 1.0  # dicts work too
    wrong_colour = "A red circle, two yellow squares and a green cross."
    wrong_count = "A red circle, three blue squares and a green cross."
    missing = "A red circle and two blue squares."
    for bad in (wrong_colour, wrong_count, missing):
        assert caption_f1([bad], [SCENE]) < 1.0, bad
    assert caption_f1([good, wrong_colour], [SCENE, SCENE]) < 1.0
    assert caption_f1(["a purple star"], [SCENE]) == 0.0


# ---- oracle-based: generation and editing --------------------------------------------------


def _fake_reader(image: list[Obj]) -> list[Obj]:
    """Stands in for the oracle: here an 'image' is already its list of objects."""
    return list(image)


def test_generation_accuracy() -> None:
    expected = [
        [{"kind": "circle", "color": "red"}, {"kind": "star", "color": "blue"}],
        [{"kind": "square", "color": "red"}],
    ]
    images = [[Obj("star", "blue"), Obj("circle", "red")], [Obj("square", "red")]]
    assert generation_accuracy(images, expected, reader=_fake_reader) == 1.0
    wrong_colour = [images[0], [Obj("square", "green")]]
    extra = [images[0] + [Obj("star", "blue")], images[1]]
    missing = [images[0][:1], images[1]]
    for bad in (wrong_colour, extra, missing):
        assert generation_accuracy(bad, expected, reader=_fake_reader) == 0.5


def test_object_f1_gives_partial_credit_where_generation_accuracy_gives_none() -> None:
    expected = [[{"kind": "circle", "color": "red"}, {"kind": "star", "color": "blue"}, {"kind": "star", "color": "blue"}]]
    two_of_three = [[Obj("circle", "red"), Obj("star", "blue")]]
    assert generation_accuracy(two_of_three, expected, reader=_fake_reader) == 0.0
    assert object_f1(two_of_three, expected, reader=_fake_reader) == 2 * 2 / 5  # multisets: one star is missing
    wrong_kind = [[Obj("square", "red"), Obj("star", "blue"), Obj("star", "blue")]]
    assert object_f1(wrong_kind, expected, reader=_fake_reader) == 2 * 2 / 6
    assert object_f1(wrong_kind, expected, reader=_fake_reader, key="color") == 1.0  # the colours are all right
    assert object_f1(wrong_kind, expected, reader=_fake_reader, key="kind") == 2 * 2 / 6
    assert object_f1([[]], expected, reader=_fake_reader) == 0.0
    with pytest.raises(ValueError, match="unknown key 'size'.*object, color, kind"):
        object_f1(wrong_kind, expected, reader=_fake_reader, key="size")


def test_editing_accuracy_against_target_images_and_expected_lists() -> None:
    target = [Obj("circle", "red", (0, 0, 10, 10)), Obj("circle", "red", (40, 40, 50, 50))]
    assert editing_accuracy([list(reversed(target))], [target], reader=_fake_reader) == 1.0
    moved = [target[0], Obj("circle", "red", (20, 20, 30, 30))]  # an object that should stay put moved
    recoloured = [target[0], Obj("circle", "blue", (40, 40, 50, 50))]
    for bad in (moved, recoloured, target[:1], target + [Obj("star", "red")]):
        assert editing_accuracy([bad], [target], reader=_fake_reader) == 0.0
    # an expected list; box None leaves the position of an added object free
    expected = (target[0], {"kind": "star", "color": "pink", "box": None})
    added = [target[0], Obj("star", "pink", (90, 90, 99, 99))]
    assert editing_accuracy([added, target], [expected, expected], reader=_fake_reader) == 0.5


# ---- routing ------------------------------------------------------------------------------


def test_routing_accuracy() -> None:
    expected = [["DET"], ["SEG", "GEN"], ["DET", "DET"], []]
    assert routing_accuracy([["[DET]"], ["GEN", "SEG"], ["DET", "DET"], []], expected) == 1.0
    assert routing_accuracy([["DET"], ["SEG"], ["DET", "DET"], []], expected) == 0.75  # a missing route
    assert routing_accuracy([["DET"], ["SEG", "GEN"], ["DET"], []], expected) == 0.75  # multiset, not set
    assert routing_accuracy([["DET"], ["SEG", "GEN"], ["DET"], []], expected, as_set=True) == 1.0
    with pytest.raises(ValueError, match="bad route"):
        routing_accuracy([["det"]], [["DET"]])
