"""Metrics on real ShapesWorld scenes, and the oracle-based metrics through the real oracle."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from evaluation.coco import GtImage, build_coco_gt, coco_ap, coco_results
from evaluation.metrics import (
    NUMBER_WORDS,
    caption_f1,
    editing_accuracy,
    generation_accuracy,
    routing_accuracy,
    vqa_accuracy,
)
from shapesworld.constants import COLORS
from shapesworld.oracle import read_objects
from shapesworld.scene import Scene, build_scene, render, sample_scene

SIZE = 128


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(7)
    return [sample_scene(rng, SIZE, n_objects=n) for n in (2, 3)]


def _gt_image(scene: Scene, image_id: int) -> GtImage:
    objs = scene.objects
    return GtImage(
        width=SIZE,
        height=SIZE,
        boxes=np.stack([o.box for o in objs]),
        labels=[o.kind for o in objs],
        masks=np.stack([o.mask for o in objs]),
        keypoints=np.stack([o.keypoints for o in objs]),
        image_id=image_id,
    )


def _scene_preds(images: list[GtImage], shift: float = 0.0, erode: int = 0) -> list[dict]:
    out = []
    for img in images:
        masks = np.stack([ndimage.binary_erosion(m, iterations=erode) if erode else m for m in img.masks])
        kps = img.keypoints.copy()
        kps[:, :, :2] += shift
        out += coco_results(img.image_id, img.boxes + shift, [1.0] * len(img.boxes), img.labels, masks, kps)
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_scene_ground_truth_scores_perfect_and_perturbed_lower(scenes: list[Scene], iou_type: str) -> None:
    images = [_gt_image(s, i + 1) for i, s in enumerate(scenes)]
    gt = build_coco_gt(images)
    assert coco_ap(gt, _scene_preds(images), iou_type)["ap"] == 1.0
    perturbed = _scene_preds(images, erode=2) if iou_type == "segm" else _scene_preds(images, shift=4.0)
    assert coco_ap(gt, perturbed, iou_type)["ap"] < 1.0


def _caption(scene: Scene) -> str:
    groups = Counter((o.color, o.kind) for o in scene.objects)
    return ", ".join(f"{NUMBER_WORDS[n]} {c} {k}{'s' * (n > 1)}" for (c, k), n in groups.items())


def test_caption_f1_on_scenes(scenes: list[Scene]) -> None:
    captions = [_caption(s) for s in scenes]
    assert caption_f1(captions, scenes) == 1.0
    assert caption_f1(captions[::-1], scenes) < 1.0  # each caption describes the other scene


class CachedOracle:
    """The real oracle, reading each distinct image once (it takes ~0.3 s an object on CPU)."""

    def __init__(self) -> None:
        self.cache: dict[bytes, list] = {}

    def __call__(self, image: np.ndarray) -> list:
        key = image.tobytes()
        if key not in self.cache:
            self.cache[key] = read_objects(image)
        return self.cache[key]


def test_generation_accuracy_with_oracle(scenes: list[Scene]) -> None:
    scene = scenes[0]
    image = render(scene)
    expected = [{"kind": o.kind, "color": o.color} for o in scene.objects]
    wrong = [dict(expected[0], color=next(c for c in COLORS if c != expected[0]["color"]))] + expected[1:]
    oracle = CachedOracle()
    assert generation_accuracy([image], [expected], reader=oracle) == 1.0
    assert generation_accuracy(
        [image, image, image], [expected, wrong, expected[1:]], reader=oracle
    ) == pytest.approx(1 / 3)


def test_editing_accuracy_with_oracle(scenes: list[Scene]) -> None:
    source = scenes[0]
    unused = next(c for c in COLORS if c not in {o.color for o in source.objects})
    specs = [o.spec for o in source.objects]
    target = build_scene([replace(specs[0], color=unused)] + specs[1:], SIZE, source.background)  # recolour
    src_img, tgt_img = render(source), render(target)
    expected = [{"kind": o.kind, "color": o.color, "box": o.box} for o in target.objects]
    oracle = CachedOracle()
    assert editing_accuracy([tgt_img] * 3, [tgt_img, expected, target], reader=oracle) == 1.0
    assert editing_accuracy([src_img] * 3, [tgt_img, expected, target], reader=oracle) == 0.0  # not applied


def test_default_reader_is_the_oracle(scenes: list[Scene]) -> None:
    scene = scenes[0]
    expected = [{"kind": o.kind, "color": o.color} for o in scene.objects]
    assert generation_accuracy([render(scene)], [expected]) == 1.0


def test_shapesworld_task_answers_score_perfect() -> None:
    """The answers ShapesWorld writes are what the metrics parse: captions, VQA words, routes."""
    from mllm.vocab import route_names_in
    from shapesworld.tasks import make_sample

    rng = np.random.default_rng(3)
    captions = [make_sample("caption", rng) for _ in range(4)]
    assert caption_f1([s.answer for s in captions], [s.scene for s in captions]) == 1.0
    assert caption_f1([s.answer for s in captions[1:] + captions[:1]], [s.scene for s in captions]) < 1.0
    vqa = [make_sample("vqa", rng) for _ in range(4)]
    assert vqa_accuracy([s.answer.upper() + "." for s in vqa], [s.answer for s in vqa]) == 1.0
    compound = [make_sample("compound", rng) for _ in range(2)]
    routes = [[t.route for t in s.targets] for s in compound]
    assert routing_accuracy([route_names_in(s.answer) for s in compound], routes) == 1.0
    assert routing_accuracy([r[:-1] for r in routes], routes) == 0.0
