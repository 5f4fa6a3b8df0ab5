"""The real tiny system end to end: compound requests, native localisation, options, save/load, errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Request, Response
from router.stages import RequestError

COMPOUND = "Detect the stars, segment the circles and draw a green square."
COMPOUND_ANSWER = "Sure, the stars [DET], the circles [SEG] and a green square [GEN]."


@pytest.fixture()
def pipe(tiny_pipeline):
    tiny_pipeline.logits_hook = None
    yield tiny_pipeline
    tiny_pipeline.logits_hook = None


def _force(pipe: Pipeline, *answers: str) -> None:
    pipe.logits_hook = forced_answer_hook(pipe.processor.tokenizer, list(answers))


def test_compound_request_returns_every_result_attached_to_its_phrase(pipe, scene_png):
    _force(pipe, COMPOUND_ANSWER)
    req = Request(images=[scene_png], instruction=COMPOUND, options={"seed": 3, "score_threshold": 0.0, "steps": 2})
    resp = pipe(req)
    assert isinstance(resp, Response)
    assert resp.routes == ["DET", "SEG", "GEN"]
    assert resp.errors == []
    assert {d.route for d in resp.detections} == {"DET", "SEG"}
    assert {d.phrase for d in resp.detections if d.route == "DET"} == {"stars"}
    assert {d.phrase for d in resp.detections if d.route == "SEG"} == {"circles"}
    assert all(d.mask is not None for d in resp.detections if d.route == "SEG")
    assert all(d.mask is None for d in resp.detections if d.route == "DET")
    (img,) = resp.images
    assert img.route == "GEN" and img.phrase == "green square"
    png = Image.open(io.BytesIO(base64.b64decode(img.png_base64)))
    assert png.size == (img.width, img.height)
    n_det = sum(d.route == "DET" for d in resp.detections)
    assert f"stars ({n_det} detection" in resp.text and "green square (1 image)" in resp.text
    assert "[DET]" not in resp.text and "[DET]" in resp.raw_text
    assert {"preprocess", "generate", "detector", "generator", "total"} <= set(resp.timings_ms)
    for d in resp.detections:  # boxes in the input image's pixels
        assert 0 <= d.box[0] <= d.box[2] <= 96 and 0 <= d.box[1] <= d.box[3] <= 96


def test_batched_requests_each_get_their_own_results(pipe, scene_png):
    _force(pipe, "the stars [DET].", "a red circle [GEN] and the circles [DET].")
    reqs = [
        Request(images=[scene_png], instruction="Detect the stars.", options={"score_threshold": 0.0}),
        Request(images=[scene_png], instruction="Draw a red circle and find circles.", options={"score_threshold": 0.0, "steps": 1}),
    ]
    a, b = pipe(reqs)
    assert a.routes == ["DET"] and b.routes == ["GEN", "DET"]
    assert {d.phrase for d in a.detections} <= {"stars"} and {d.phrase for d in b.detections} <= {"circles"}
    assert len(a.images) == 0 and len(b.images) == 1


def test_edit_and_pose_routes(pipe, scene_png):
    _force(pipe, "the star blue [EDIT], the squares [POSE].")
    resp = pipe(Request(images=[scene_png], instruction="Make the star blue and find the keypoints of squares.",
                        options={"score_threshold": 0.0, "steps": 1, "seed": 0}))
    assert resp.errors == []
    (edited,) = resp.images
    assert edited.route == "EDIT" and edited.source_image == 0 and (edited.width, edited.height) == (96, 96)
    assert resp.keypoints and all(len(k.keypoints) == 6 and k.phrase == "squares" for k in resp.keypoints)


def test_native_localisation_becomes_items_without_route(pipe, scene_png):
    _force(pipe, "<cls_0><loc_2><loc_3><loc_10><loc_12>, <cls_1><loc_20><loc_20><loc_30><loc_31>.")
    resp = pipe(Request(images=[scene_png], instruction="Detect circle, star and give their box coordinates."))
    assert [(d.label, d.route) for d in resp.detections] == [("circle", None), ("star", None)]
    x1, y1, x2, y2 = resp.detections[0].box
    assert x1 == pytest.approx(2.5 / 32 * 96) and y2 == pytest.approx(12.5 / 32 * 96)
    assert resp.routes == [] and resp.text == "circle, star."


def test_allowed_routes_ban_the_others(pipe, scene_png):
    gen_id = pipe.processor.route_token_ids["GEN"]

    def prefer_gen(step, logits):
        logits[:, gen_id] += 1e4
        return logits

    pipe.logits_hook = prefer_gen
    opts = {"max_new_tokens": 3, "routes": ["DET"], "steps": 1}
    resp = pipe(Request(images=[scene_png], instruction="Draw something.", options=opts))
    assert "GEN" not in resp.routes
    free = pipe(Request(images=[scene_png], instruction="Draw something.", options={**opts, "routes": None}))
    assert free.routes[:1] == ["GEN"]


def test_bad_requests_raise_request_error(pipe):
    with pytest.raises(RequestError, match="images\\[0\\]"):
        pipe(Request(images=[b"not an image"], instruction="Detect circles."))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(RequestError, match="unknown route 'COUNT'"):
        pipe(Request(images=[png.getvalue()], instruction="x", options={"routes": ["COUNT"]}))
    with pytest.raises(RequestError, match="outside"):
        pipe({"images": [png.getvalue()], "instruction": "What is <region>?", "regions": [{"point": [20, 3]}]})
    with pytest.raises(RequestError, match="instruction"):
        pipe({"images": [], "instruction": ""})


def test_region_prompt_reaches_the_model(pipe, scene_png):
    _force(pipe, "a red circle.")
    resp = pipe(Request(images=[scene_png], instruction="What is in <region>?", regions=[{"box": (10, 10, 40, 40)}]))
    assert resp.text == "a red circle."


def test_save_and_load_round_trip(pipe, scene_png, tmp_path):
    _force(pipe, COMPOUND_ANSWER)
    req = Request(images=[scene_png], instruction=COMPOUND, options={"seed": 5, "score_threshold": 0.0, "steps": 1})
    want = pipe(req)
    pipe.save_pretrained(tmp_path)
    loaded = Pipeline.from_pretrained(tmp_path)
    _force(loaded, COMPOUND_ANSWER)
    got = loaded(req)
    assert got.raw_text == want.raw_text
    assert np.allclose([d.box for d in got.detections], [d.box for d in want.detections], atol=1e-4)
    assert got.images[0].png_base64 == want.images[0].png_base64
    for (k, a), b in zip(pipe.system.state_dict().items(), loaded.system.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_decoder_only_process_runs_planned_calls(pipe, scene_png):
    """A Ray decoder replica holds no MLLM: stages are plain data that cross processes."""
    import pickle

    _force(pipe, "the stars [DET].")
    prepared = pipe.prepare([Request(images=[scene_png], instruction="Detect stars.", options={"score_threshold": 0.0})])
    gens = pipe.generate(prepared)
    calls = pickle.loads(pickle.dumps(pipe.plan(prepared, gens)))
    assert isinstance(calls["detector"][0].states, np.ndarray)
    replica = Pipeline(pipe.config, pipe.system, processor=None)
    replica.system = pipe.system  # same weights; no generate needed
    results = {"detector": replica.run_decoder("detector", calls["detector"])}
    (resp,) = pipe.assemble(prepared, gens, pickle.loads(pickle.dumps(results)), {})
    assert resp.routes == ["DET"] and resp.errors == []


# ---- polygons on request ----------------------------------------------------------------------
def _polygon_bias(pipe: Pipeline):
    """An additive hook that prefers <cls_0>, then <loc_5>, then eos: left alone it writes class slots only."""
    tok = pipe.processor.tokenizer
    cls0, loc5 = tok.convert_tokens_to_ids(["<cls_0>", "<loc_5>"])

    def hook(step: int, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        out[:, cls0] += 100.0
        out[:, loc5] += 90.0
        out[:, tok.eos_token_id] += 50.0
        return out

    return hook


def test_polygon_request_is_answered_with_the_requested_point_count(pipe, scene_png):
    """23 points: a count the ShapesWorld corpus (4..20) never holds; the decoding constraint gives it exactly."""
    pipe.logits_hook = _polygon_bias(pipe)
    req = Request(images=[scene_png], instruction="Segment each star with a 23-point polygon.",
                  options={"max_new_tokens": 100})
    resp = pipe(req)
    assert len(resp.polygons) == 2  # a third polygon (47 tokens) no longer fits in the budget
    assert all(p.label == "star" and len(p.points) == 23 for p in resp.polygons)
    assert all(p.mask is not None and tuple(p.mask.size) == (96, 96) for p in resp.polygons)
    assert resp.errors == []
    # the same model asked for boxes is not constrained: it writes class slots with no locations
    free = pipe(Request(images=[scene_png], instruction="Detect each star and give box coordinates.",
                        options={"max_new_tokens": 100}))
    assert free.polygons == [] and "<loc_" not in free.raw_text


def test_polygon_count_out_of_range_is_a_request_error(pipe, scene_png):
    with pytest.raises(RequestError, match="supported point counts are 3..64"):
        pipe(Request(images=[scene_png], instruction="Outline each star with a 2-point polygon."))


def test_polygon_masks_are_rasterised_polygons():
    from evaluation.coco import rle_to_mask
    from router.response import polygon_rle

    mask = rle_to_mask(polygon_rle([(10, 10), (30, 10), (30, 20), (10, 20)], (40, 30)))  # a 20 x 10 rectangle
    assert mask.shape == (30, 40) and abs(int(mask.sum()) - 200) <= 30
    assert mask[15, 20] and not mask[5, 5] and not mask[25, 35]
