"""Native localisation: generated text -> detections, grounding boxes, polygons, points in pixels."""

from __future__ import annotations

import pytest

from mllm.codec import CodecError, LocationCodec, bind_classes
from mllm.localize import (
    DEFAULT_POLYGON_POINTS,
    LocalizeRequest,
    NativeResults,
    localize_mode,
    parse_class_list,
    parse_native,
    strip_location_tokens,
)

BINS = 32
SIZE = (64, 32)  # (w, h): one bin is 2 px wide and 1 px tall
CODEC = LocationCodec(BINS)


def _box(b: list[float], cls: int | None = None) -> str:
    return CODEC.encode_box(b, SIZE, cls=cls)


def test_detections_use_binding_and_pixel_coordinates() -> None:
    binding = bind_classes(parse_class_list("detect cat, dog and bird"), slots=8)
    text = f"Sure: {_box([2, 1, 10, 9], 0)}, {_box([40, 3, 60, 30], 2)}."
    out = parse_native(text, SIZE, binding, BINS)
    assert out.detections == [("cat", [3.0, 1.5, 11.0, 9.5]), ("bird", [41.0, 3.5, 61.0, 30.5])]
    assert out.boxes == out.polygons == out.points == [] and out.errors == []


def test_grounding_boxes_and_points_take_the_phrase_before() -> None:
    text = (
        f"Here are the red circles{_box([0, 0, 4, 4])}{_box([10, 10, 20, 20])} and the blue star "
        f"{_box([30, 2, 34, 6])}; the tip is at {CODEC.encode_point([33, 3], SIZE)}."
    )
    out = parse_native(text, SIZE, None, BINS)
    assert out.boxes == [
        ("red circles", [1.0, 0.5, 5.0, 4.5]),
        ("red circles", [11.0, 10.5, 21.0, 20.5]),
        ("blue star", [31.0, 2.5, 35.0, 6.5]),
    ]
    assert out.points == [("tip is at", (33.0, 3.5))]
    assert out.detections == [] and out.errors == []


def test_polygons_auto_and_polygon_mode() -> None:
    binding = {0: "triangle"}
    tri = CODEC.encode_polygon([10, 2, 20, 20, 2, 20], SIZE, cls=0)
    out = parse_native(f"{tri} and {_box([0, 0, 8, 8], 0)}", SIZE, binding, BINS)
    assert out.polygons == [("triangle", [(11.0, 2.5), (21.0, 20.5), (3.0, 20.5)])]
    assert out.detections == [("triangle", [1.0, 0.5, 9.0, 8.5])]
    # asked for polygons: a class slot with 4 tokens is a malformed polygon, not a box
    poly = parse_native(f"{tri} and {_box([0, 0, 8, 8], 0)}", SIZE, binding, BINS, mode="polygon")
    assert len(poly.polygons) == 1 and poly.detections == []
    assert len(poly.errors) == 1 and "accepted 2N with N >= 3" in poly.errors[0]


@pytest.mark.parametrize(
    ("text", "binding", "match"),
    [
        ("x <loc_1><loc_2><loc_3>", None, "3 bare location tokens"),  # odd count
        ("x <loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>", None, "6 bare location tokens"),
        ("x <loc_9><loc_2><loc_3><loc_4>", None, "x2 < x1"),
        ("x <loc_1><loc_2><loc_40><loc_4>", None, "out of range"),
        ("<cls_3><loc_1><loc_2><loc_3><loc_4>", {0: "cat"}, "<cls_3> is not bound"),
        ("<cls_0><loc_1><loc_2><loc_3><loc_4>", None, "no class binding"),
        ("<cls_0> then text", {0: "cat"}, "followed by 0 location tokens"),
        ("<cls_0><loc_1><loc_2>", {0: "cat"}, "followed by 2 location tokens"),
    ],
)
def test_malformed_groups_are_collected_or_raised(text: str, binding, match: str) -> None:
    good = _box([2, 2, 6, 6], 0) if binding else _box([2, 2, 6, 6])
    out = parse_native(f"{text}, ok {good}", SIZE, binding or None, BINS)
    assert len(out.errors) == 1 and match in out.errors[0]
    assert len(out.detections) + len(out.boxes) == 1  # the well-formed group still comes through
    with pytest.raises(CodecError, match=match):
        parse_native(text, SIZE, binding, BINS, strict=True)


def test_plain_text_and_bad_arguments() -> None:
    out = parse_native("There is a cat on the left.", SIZE, {0: "cat"}, BINS)
    assert out == NativeResults() and out.empty
    with pytest.raises(CodecError, match="both sides > 0"):
        parse_native("x", (0, 5), None, BINS)
    with pytest.raises(ValueError, match="mode must be"):
        parse_native("x", SIZE, None, BINS, mode="boxes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("detect cat, dog and bird", ["cat", "dog", "bird"]),
        ("Find: red circle, blue star.", ["red circle", "blue star"]),
        ("<image>\nPlease detect cat, car in the image.", ["cat", "car"]),
        ("Detect all the red circles and blue stars as polygons.", ["red circles", "blue stars"]),
        ("Detect cats, dogs, and birds", ["cats", "dogs", "birds"]),
        ("Please detect the following objects: square; star or cross.", ["square", "star", "cross"]),
        ("Segment every green hexagon in this picture", ["green hexagon"]),
        ("detect cat, Cat, dog", ["cat", "dog"]),
        ("<image>\nOK, give the keypoints of each hexagon and triangle, if you can.", ["hexagon", "triangle"]),
        ("Hey! find cats and dogs right away", ["cats", "dogs"]),
        ("locate every star and cross as soon as possible.", ["star", "cross"]),
        ("Where are the squares and pentagons?", ["squares", "pentagons"]),
        ("Could you draw boxes around all the red stars and hexagons, please", ["red stars", "hexagons"]),
        ("Find every green circle and every yellow star.", ["green circle", "yellow star"]),
        ("Go ahead and report the coordinates of each hexagon and cross!", ["hexagon", "cross"]),
        ("Put bounding boxes on the crosses and the stars.", ["crosses", "stars"]),
        ("Mark each red circle with a box.", ["red circle"]),
        ("Give me a mask for each star.", ["star"]),
        ("What is in the image?", []),
        ("Describe the scene.", []),
    ],
)
def test_parse_class_list(instruction: str, expected: list[str]) -> None:
    assert parse_class_list(instruction) == expected


def test_localize_mode_and_strip() -> None:
    assert localize_mode("Outline the circles as polygons") == "polygon"
    assert localize_mode("detect the circles") == "auto"
    assert strip_location_tokens("a cat <cls_0><loc_1><loc_2><loc_3><loc_4> here.") == "a cat here."


def test_class_list_from_every_shapesworld_native_detection_phrasing():
    from shapesworld.tasks import TEMPLATES

    for template in TEMPLATES["native_detection"]:
        instruction = template.format(cats="circle, red star and square")
        assert parse_class_list(instruction) == ["circle", "red star", "square"], instruction


# ---- polygons on request ------------------------------------------------------------------------
CATEGORY_LISTS = (
    ("cross and circle", ["cross", "circle"]),
    ("circle, red star and square", ["circle", "red star", "square"]),
    ("green hexagon", ["green hexagon"]),
)


@pytest.mark.parametrize("n", [3, 8, 37, 64])
@pytest.mark.parametrize(("cats", "expected"), CATEGORY_LISTS)
def test_every_shapesworld_polygon_phrasing_binds_categories_and_count(cats, expected, n):
    from mllm.localize import localize_request
    from shapesworld.tasks import phrasings

    for template in phrasings("polygon"):
        instruction = "<image>\n" + template.format(cats=cats, n=n)
        assert parse_class_list(instruction) == expected, instruction
        points = n if "{n}" in template else DEFAULT_POLYGON_POINTS
        assert localize_request(instruction) == LocalizeRequest("polygon", points), instruction


@pytest.mark.parametrize(("cats", "expected"), CATEGORY_LISTS)
def test_every_shapesworld_native_phrasing_binds_only_categories(cats, expected):
    from mllm.localize import localize_request
    from shapesworld.tasks import phrasings

    for template in phrasings("native_detection") + phrasings("detection"):
        instruction = "<image>\n" + template.format(cats=cats)
        assert parse_class_list(instruction) == expected, instruction
        assert localize_request(instruction) == LocalizeRequest(), instruction


@pytest.mark.parametrize(
    ("instruction", "classes", "points"),
    [
        ("Outline every cross and circle with a polygon of 8 points.", ["cross", "circle"], 8),
        ("Segment each star with a 12-point polygon", ["star"], 12),
        ("outline the red circle using 20 vertices", ["red circle"], 20),
        ("Trace every square with twelve corners.", ["square"], 12),
        ("Outline each star and cross with a polygon.", ["star", "cross"], DEFAULT_POLYGON_POINTS),
        ("Give the contour of the blue triangle as exactly 5 points.", ["blue triangle"], 5),
    ],
)
def test_requested_polygons(instruction, classes, points):
    from mllm.localize import localize_request

    assert parse_class_list(instruction) == classes
    assert localize_request(instruction) == LocalizeRequest("polygon", points)


@pytest.mark.parametrize(
    ("instruction", "match"),
    [
        ("Outline each star with a 2-point polygon", "polygon of 2 points was asked for; supported point counts are 3..64"),
        ("Outline each star using 65 vertices", "supported point counts are 3..64"),
        ("Outline each star with 8 points and each circle with 12 points", "polygons of 8 and 12 points"),
    ],
)
def test_polygon_count_errors_say_what_is_accepted(instruction, match):
    from mllm.localize import LocalizeError, localize_request

    with pytest.raises(LocalizeError, match=match):
        localize_request(instruction)


def test_counts_outside_polygon_requests_are_ignored():
    from mllm.localize import localize_request, requested_points

    assert localize_request("How many stars are there?") == LocalizeRequest()
    assert requested_points("Detect the stars.") is None
    assert localize_mode("Describe the outline of every star") == "polygon"
