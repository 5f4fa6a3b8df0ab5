"""The shipped embedded default (checkpoints/shapes/): it loads by preset name, fits the size budget,
and a short fixed ShapesWorld evaluation stays above floors set a little below what it achieves, so a
regression anywhere on the path (processor, generation, routing, decoders, metrics) fails CI.

The floors are measured on this test's own sample (N scenes, val split, seed 0; see EVAL.md for the
N = 200 figures); they are not the issue's targets, most of which this CPU-trained model misses.
"""

from __future__ import annotations

import pytest

from router.assets import CHECKPOINT_ROOT, SYSTEM_CONFIG

CKPT = CHECKPOINT_ROOT / "shapes"
N = 60  # 5 scenes per task family (12 families)
MAX_BYTES = 40 * 1024 * 1024
# Achieved by the shipped checkpoint at N = 60 (routing 0.98, phrase 1.0, [DET] AP 0.86, [SEG] AP 0.68,
# class-agnostic [DET] AP 0.82, [GRD] acc50 1.0 (5 of 5), [POSE] AP 0.79, VQA 0.40 (2 of 5), caption F1 0.15;
# see EVAL.md) minus a margin ([GRD] may miss one of its 5 scenes). Caption F1 is about 0.2 on every scene set
# (0.214 at N = 500) and moves by 0.1 between checkpoints on these 5 scenes, so its floor is loose. VQA answers
# are each question type's constant guess (under the prior at N = 500, EVAL.md), which moves with any LM training
# (0.80 on these 5 scenes for the previous checkpoint): its floor (1 of 5) catches answers that stop parsing. Metrics it
# does not yet score clearly above 0 (generation, editing, native boxes, polygon AP), or only on one or two of its
# 5 scenes (region), have no floor.
FLOORS: dict[str, float] = {
    "routing_acc": 0.95,
    "phrase_acc": 0.95,
    "det_ap": 0.80,
    "seg_ap": 0.65,
    "det_ap_agnostic": 0.77,
    "grd_acc50": 0.79,
    "pose_ap": 0.74,
    "vqa_acc": 0.20,
    "caption_f1": 0.10,
}

pytestmark = pytest.mark.skipif(
    not (CKPT / SYSTEM_CONFIG).is_file(),
    reason="checkpoints/shapes/ is absent: train it with `superlink train configs/shapes.yaml --out runs/shapes` "
    "and copy runs/shapes/model/ there (see checkpoints/shapes/README.md)",
)


@pytest.fixture(scope="module")
def result() -> dict:
    from evaluation.suite import evaluate_pipeline
    from router.pipeline import Pipeline

    return evaluate_pipeline(Pipeline.from_pretrained("shapes"), split="val", n=N, seed=0)


def test_checkpoint_is_safetensors_and_within_40_mb():
    files = [p for p in CKPT.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert weights, "no safetensors weights in checkpoints/shapes"
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl")], "pickled weights must not ship"
    assert sum(p.stat().st_size for p in weights) <= MAX_BYTES


def test_preset_name_loads_the_trained_checkpoint():
    from router.assets import shipped_checkpoint
    from router.pipeline import Pipeline

    assert shipped_checkpoint("shapes") == CKPT
    pipe = Pipeline.from_pretrained("shapes", decoders=[])
    assert pipe.config.name == "shapes"
    assert pipe.config.model.vocab.location_bins == 64


def test_short_evaluation_reports_every_metric(result):
    from evaluation.suite import METRIC_KEYS

    assert result["n"] == N
    for key in METRIC_KEYS:
        assert result[key] is not None and 0.0 <= result[key] <= 1.0, key


@pytest.mark.parametrize("metric", sorted(FLOORS))
def test_metric_stays_above_its_floor(result, metric):
    assert result[metric] >= FLOORS[metric], f"{metric} fell to {result[metric]} (floor {FLOORS[metric]})"


def test_polygon_request_with_a_count_the_corpus_lacks_gets_that_count():
    """The corpus polygons have 4..20 points; asked for 32 the shipped model answers 32-point polygons
    (the decoding constraint counts the location tokens; the model still places every point)."""
    import numpy as np
    from PIL import Image

    from router.pipeline import Pipeline
    from router.schemas import Request
    from shapesworld.tasks import make_sample

    sample = make_sample("polygon", np.random.default_rng(100), 128, 64)
    pipe = Pipeline.from_pretrained("shapes", decoders=[])
    resp = pipe(Request(images=[Image.fromarray(sample.image)], options={"max_new_tokens": 256},
                        instruction=f"Segment each {' and '.join(sample.classes)} with a 32-point polygon."))
    assert resp.polygons, resp.raw_text
    assert all(len(p.points) == 32 and p.label in sample.classes for p in resp.polygons)
