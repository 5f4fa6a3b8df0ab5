import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shapesworld.oracle import check_agreement, match_objects, read_objects, segment_colors
from shapesworld.scene import ObjectSpec, place_objects, render, render_objects, sample_background


def test_agreement_on_clean_renders():
    result = check_agreement(n=60, seed=7, image_size=128)
    assert result["agreement"] >= 0.99, result
    assert result["spurious"] <= 1
    assert result["objects"] > 100


def test_reads_each_kind_alone():
    from shapesworld.constants import KINDS

    rng = np.random.default_rng(0)
    for i, kind in enumerate(KINDS):
        spec = ObjectSpec(kind, "blue", (64.0, 64.0), 16.0, 0.37 * i)
        objs = read_objects(render(render_objects([spec], 128, rng)))
        assert [(o.kind, o.color) for o in objs] == [(kind, "blue")]


def test_reads_downsampled_big_objects():
    rng = np.random.default_rng(3)
    total = right = 0
    for _ in range(12):
        scene = place_objects(rng, [(None, None)] * int(rng.integers(1, 4)), 128, sample_background(rng), (0.17, 0.25))
        if scene is None:
            continue
        small = np.asarray(Image.fromarray(render(scene)).resize((64, 64), Image.BILINEAR))
        truth = [{"kind": o.kind, "color": o.color, "box": o.box / 2} for o in scene.objects]
        counts = match_objects(truth, read_objects(small))
        total += len(truth)
        right += counts["matched"]
    assert right / total >= 0.85


def test_blank_image_has_no_objects_and_bad_input_fails():
    assert read_objects(np.full((64, 64, 3), 240, np.uint8)) == []
    assert (segment_colors(np.full((16, 16, 3), 240, np.uint8)) == 0).all()
    with pytest.raises(ValueError, match="H, W, 3"):
        read_objects(np.zeros((32, 32), np.uint8))


def test_cli_world_check_json():
    from services.cli import app

    result = CliRunner().invoke(app, ["world", "check", "--n", "20", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert 0.0 <= payload["agreement"] <= 1.0 and payload["scenes"] == 20


def test_reads_noisy_renders():
    rng = np.random.default_rng(5)
    total = right = spurious = 0
    for _ in range(10):
        scene = place_objects(rng, [(None, None)] * 3, 128, sample_background(rng), (0.12, 0.2))
        if scene is None:
            continue
        noisy = np.clip(render(scene) + rng.normal(0, 10, (128, 128, 3)), 0, 255).astype(np.uint8)
        truth = [{"kind": o.kind, "color": o.color, "box": o.box} for o in scene.objects]
        counts = match_objects(truth, read_objects(noisy))
        total, right, spurious = total + len(truth), right + counts["matched"], spurious + counts["spurious"]
    assert right / total >= 0.9 and spurious <= 2
