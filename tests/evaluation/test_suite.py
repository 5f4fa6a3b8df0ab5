"""The ShapesWorld evaluation suite: fixed samples, scoring against ground truth, and a teacher-forced run."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from evaluation import suite
from router.schemas import Detection, GeneratedImage, Response
from shapesworld.scene import render


def _response(**kw) -> Response:
    return Response(text=kw.pop("text", ""), raw_text=kw.pop("raw_text", ""), **kw)


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _family(family: str, n: int) -> list:
    return [s for _, s in suite.eval_samples("val", n, families=(family,))]


def test_samples_are_fixed_spread_over_families_and_grow_with_n():
    small = suite.eval_samples("val", len(suite.FAMILIES))
    assert [f for f, _ in small] == list(suite.FAMILIES)
    big = suite.eval_samples("val", 2 * len(suite.FAMILIES))
    firsts = {f: s for f, s in big[::-1]}  # first sample of each family in the bigger set
    for f, s in small:
        assert s.instruction == firsts[f].instruction and s.answer == firsts[f].answer
    assert suite.eval_samples("val", 3, seed=1)[0][1].answer != suite.eval_samples("val", 3, seed=0)[0][1].answer
    with pytest.raises(ValueError, match="unknown split"):
        suite.eval_samples("dev", 3)
    with pytest.raises(ValueError, match="task families"):
        suite.eval_samples("val", 3, families=("juggling",))


def test_heldout_wording_set_is_the_same_scenes_worded_differently():
    template = suite.eval_samples("val", 22)
    heldout = suite.eval_samples("val", 22, wording="heldout")
    assert [f for f, _ in heldout] == [f for f, _ in template]
    for (_, a), (_, b) in zip(template, heldout, strict=True):
        assert a.answer == b.answer and a.classes == b.classes
        assert a.heldout_wording == [] and b.heldout_wording
    assert sum(a.instruction != b.instruction for (_, a), (_, b) in zip(template, heldout, strict=True)) >= 20
    with pytest.raises(ValueError, match="wording"):
        suite.eval_samples("val", 3, wording="train")


def test_routing_by_heldout_axis_counts_each_kind_once_per_sample():
    pairs = suite.eval_samples("val", 11, wording="heldout")
    scored = [suite.Scored(f, s, _response(routes=suite.route_names_in(s.answer))) for f, s in pairs]
    axes = suite.routing_by_axis(scored)
    assert axes and set(axes.values()) == {1.0}
    assert set(axes) == {h.split("=")[0] for _, s in pairs for h in s.heldout_wording}
    wrong = [suite.Scored(f, s, _response(routes=[])) for f, s in pairs]
    assert min(suite.routing_by_axis(wrong).values()) < 1.0  # routed families now miss


def test_detection_ap_is_one_for_ground_truth_and_zero_for_nothing():
    samples = _family("detection", 4)
    perfect, empty = [], []
    for s in samples:
        dets = [Detection(route="DET", phrase=t.phrase, label=t.phrase, box=tuple(map(float, b)), score=0.9)
                for t in s.targets for b in t.boxes]
        perfect.append(suite.Scored("detection", s, _response(detections=dets, routes=["DET"] * len(s.targets))))
        empty.append(suite.Scored("detection", s, _response()))
    assert suite.score_routed(perfect, "DET", "bbox")["ap"] == pytest.approx(1.0)
    assert suite.score_routed(empty, "DET", "bbox")["ap"] == 0.0
    assert suite.score_routing(perfect) == 1.0 and suite.score_routing(empty) == 0.0


def test_grounding_takes_the_best_scoring_box():
    (s,) = _family("grounding", 1)
    gt = tuple(map(float, s.targets[0].boxes[0]))
    wrong = (0.0, 0.0, 1.0, 1.0)
    good = _response(detections=[Detection(route="GRD", label="x", box=gt, score=0.8),
                                 Detection(route="GRD", label="x", box=wrong, score=0.1)])
    bad = _response(detections=[Detection(route="GRD", label="x", box=gt, score=0.1),
                                Detection(route="GRD", label="x", box=wrong, score=0.8)])
    assert suite.score_grounding([suite.Scored("grounding", s, good)]) == 1.0
    assert suite.score_grounding([suite.Scored("grounding", s, bad)]) == 0.0


def test_generation_and_editing_are_read_by_the_oracle():
    (gen,) = _family("generation", 1)
    target = gen.targets[0].image
    ok = _response(images=[GeneratedImage(route="GEN", png_base64=_png(target), width=128, height=128)])
    assert suite.score_generation([suite.Scored("generation", gen, ok)]) == 1.0
    assert suite.score_generation([suite.Scored("generation", gen, _response())]) == 0.0
    assert suite.score_generation_f1([suite.Scored("generation", gen, ok)], "object") == 1.0
    assert suite.score_generation_f1([suite.Scored("generation", gen, _response())], "color") == 0.0
    blank = np.full_like(target, 240)  # background only: nothing the prompt asked for
    empty = _response(images=[GeneratedImage(route="GEN", png_base64=_png(blank), width=128, height=128)])
    assert suite.score_generation_f1([suite.Scored("generation", gen, empty)], "object") == 0.0
    edits = _family("editing", 6)
    right = [suite.Scored("editing", e, _response(images=[GeneratedImage(
        route="EDIT", png_base64=_png(e.targets[0].image), width=128, height=128)])) for e in edits]
    unchanged = [suite.Scored("editing", e, _response(images=[GeneratedImage(
        route="EDIT", png_base64=_png(render(e.scene)), width=128, height=128)])) for e in edits]
    assert suite.score_editing(right) == 1.0
    assert suite.score_editing(unchanged) == 0.0  # returning the source image is not an edit


def test_generated_images_are_read_at_the_size_they_were_drawn():
    """A 32-px [GEN] image: a stray pixel is noise, not an extra object; a real extra object still fails."""
    from shapesworld.constants import COLORS
    from shapesworld.oracle import read_objects

    (gen,) = _family("generation", 1)
    small = np.asarray(Image.fromarray(gen.targets[0].image).resize((32, 32), Image.Resampling.NEAREST)).copy()
    clean = suite.Scored("generation", gen, _response(images=[GeneratedImage(
        route="GEN", png_base64=_png(small), width=32, height=32)]))
    assert suite.score_generation([clean]) == 1.0
    used = {o["color"] for o in gen.targets[0].objects}
    stray = next(c for c in COLORS if c not in used)
    corner = small[:3, :3].reshape(-1, 3)
    assert (corner == corner[0]).all(), "the test needs a plain background corner"
    specked = small.copy()
    specked[1, 1] = COLORS[stray]  # one drawn pixel of another palette colour
    big = suite.at_scene_size(specked, (128, 128))
    assert any(o.color == stray for o in read_objects(big))  # the oracle's 128-px floor counts it as an object
    scored = suite.Scored("generation", gen, _response(images=[GeneratedImage(
        route="GEN", png_base64=_png(specked), width=32, height=32)]))
    assert suite.score_generation([scored]) == 1.0
    blob = small.copy()
    blob[:5, :5] = COLORS[stray]  # 25 drawn pixels (400 at scene size): as large as the smallest target objects
    scored = suite.Scored("generation", gen, _response(images=[GeneratedImage(
        route="GEN", png_base64=_png(blob), width=32, height=32)]))
    assert suite.score_generation([scored]) == 0.0


def test_added_object_may_be_anywhere_but_kept_objects_stay_put():
    for e in _family("editing", 30):
        want = suite.edit_expectation(e)
        if len(want) > len(e.scene.objects):
            assert sum(w["box"] is None for w in want) == 1
            return
        assert all(w["box"] is not None for w in want)
    pytest.fail("no 'add' edit among 30 samples")


@pytest.mark.slow
def test_teacher_forced_tiny_pipeline_scores_text_and_native_answers_perfectly():
    from router.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("tiny")
    families = ("vqa", "caption", "region", "native_detection", "polygon")
    result = suite.evaluate_pipeline(pipe, n=10, teacher_force=True, families=families)
    assert result["n"] == 10
    assert result["vqa_acc"] == 1.0 and result["caption_f1"] == 1.0 and result["region_acc"] == 1.0
    assert result["routing_acc"] == 1.0
    assert result["native_det_ap"] > 0.5  # 32 location bins over 128 px: boxes quantised to 4 px
    assert result["poly_count_ok"] == 1.0 and result["poly_ap"] > 0.3
    assert result["det_ap"] is None and result["gen_acc"] is None  # families not evaluated


def _polygon_response(sample, bins: int = 1000, drop_last_point: bool = False) -> Response:
    from mllm.localize import parse_native
    from router.response import polygon_rle
    from router.schemas import Polygon

    found = parse_native(sample.answer, (128, 128), dict(enumerate(sample.classes)), bins, mode="polygon")
    polys, raw = [], sample.answer
    for label, pts in found.polygons:
        pts = pts[:-1] if drop_last_point else pts
        polys.append(Polygon(label=label, phrase=label, points=pts, mask=polygon_rle(pts, (128, 128))))
    if drop_last_point:
        raw = re.sub(r"((?:<loc_\d+>)+)", lambda m: "".join(re.findall(r"<loc_\d+>", m.group(1))[:-2]), raw)
    return _response(raw_text=raw, polygons=polys)


def test_polygon_metrics_score_reference_polygons_and_count_points():
    samples = _family("polygon", 6)
    assert any(s.answer != "none." for s in samples)
    good = [suite.Scored("polygon", s, _polygon_response(s)) for s in samples]
    short = [suite.Scored("polygon", s, _polygon_response(s, drop_last_point=True)) for s in samples]
    empty = [suite.Scored("polygon", s, _response()) for s in samples]
    assert suite.score_polygon_counts(good) == 1.0
    assert suite.score_polygon_counts(short) == 0.0
    assert suite.score_polygon_counts(empty) is None
    assert suite.score_polygons(good)["ap"] > 0.5  # the reference outlines are polygons of 4..20 points
    assert suite.score_polygons(empty)["ap"] == 0.0


@pytest.mark.slow
def test_teacher_forced_heldout_wording_scores_the_same_answers():
    from router.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("tiny")
    result = suite.evaluate_pipeline(pipe, n=6, teacher_force=True, families=("vqa", "caption", "region"),
                                     wording="both")
    assert result["n"] == result["n_heldout_wording"] == 6
    for key in ("vqa_acc", "caption_f1", "region_acc", "routing_acc"):
        assert result[key] == result[key + suite.HELDOUT] == 1.0, key
    only = suite.evaluate_pipeline(pipe, n=3, teacher_force=True, families=("vqa",), wording="heldout")
    assert "vqa_acc" not in only and only["vqa_acc_heldout_wording"] == 1.0
    with pytest.raises(ValueError, match="accepted"):
        suite.evaluate_pipeline(pipe, n=3, wording="pirate")


def test_eval_cli_scores_a_subset_of_families_and_refuses_unknown_ones():
    from typer.testing import CliRunner

    from services.cli import app

    result = CliRunner().invoke(app, ["eval", "--model", "tiny", "--n", "4", "--wording", "template",
                                      "--families", "vqa,caption", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert payload["families"] == ["vqa", "caption"] and payload["n"] == 4
    assert payload["vqa_acc"] is not None and payload["det_ap"] is None  # only the asked families are scored
    bad = CliRunner().invoke(app, ["eval", "--model", "tiny", "--n", "4", "--families", "detections"])
    assert bad.exit_code == 2 and "unknown task families ['detections']" in bad.output


def test_eval_cli_teacher_force_scores_the_reference_answers():
    from typer.testing import CliRunner

    from services.cli import app

    args = ["eval", "--model", "tiny", "--n", "4", "--wording", "template", "--families", "vqa", "--json"]
    forced = CliRunner().invoke(app, [*args, "--teacher-force"])
    assert forced.exit_code == 0, forced.output
    payload = json.loads(forced.output.strip().splitlines()[-1])
    assert payload["teacher_force"] is True and payload["vqa_acc"] == 1.0  # the untrained model writes the answers
    free = json.loads(CliRunner().invoke(app, args).output.strip().splitlines()[-1])
    assert "teacher_force" not in free and free["vqa_acc"] < 1.0
