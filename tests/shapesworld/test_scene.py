import numpy as np
import pytest

from shapesworld.constants import COLORS, KEYPOINTS_PER_KIND, KINDS, NUM_KEYPOINTS
from shapesworld.scene import (
    MIN_VISIBLE,
    ObjectSpec,
    full_mask,
    render,
    render_objects,
    sample_scene,
)


def _scenes(n=30, seed=0, size=128):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, size) for _ in range(n)]


def test_same_seed_same_scene_and_pixels():
    a, b = _scenes(5, seed=3), _scenes(5, seed=3)
    for sa, sb in zip(a, b, strict=True):
        assert np.array_equal(render(sa), render(sb))
        assert [(o.kind, o.color, o.center) for o in sa.objects] == [(o.kind, o.color, o.center) for o in sb.objects]
    assert not np.array_equal(render(a[0]), render(_scenes(1, seed=4)[0]))


def test_scene_contents_follow_the_rules():
    for scene in _scenes():
        assert 1 <= len(scene.objects) <= 8
        for o in scene.objects:
            assert o.kind in KINDS and o.color in COLORS
            assert o.visible_fraction >= MIN_VISIBLE
            assert 2 * o.size >= 18  # kinds stay distinguishable
        assert [o.depth for o in scene.objects] == list(range(len(scene.objects)))


def test_masks_are_exactly_the_rendered_pixels():
    for scene in _scenes(15):
        img = render(scene)
        painted = np.zeros(img.shape[:2], bool)
        for o in scene.objects:
            assert o.mask.any()
            assert np.all(img[o.mask] == COLORS[o.color])
            assert not (painted & o.mask).any()  # instance masks never overlap
            painted |= o.mask
            ys, xs = np.nonzero(o.mask)
            assert o.box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.array_equal(painted, scene.id_map > 0)


def test_same_colour_objects_never_touch():
    for scene in _scenes():
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                if a.color == b.color:
                    grown = np.zeros_like(a.mask)
                    ys, xs = np.nonzero(full_mask(a.spec, scene.image_size))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            grown[np.clip(ys + dy, 0, 127), np.clip(xs + dx, 0, 127)] = True
                    assert not (grown & full_mask(b.spec, scene.image_size)).any()


def test_keypoints_inside_boxes_with_visibility():
    seen_occluded = False
    for scene in _scenes(40):
        for o in scene.objects:
            kp = o.keypoints
            assert kp.shape == (NUM_KEYPOINTS, 3)
            used = KEYPOINTS_PER_KIND[o.kind]
            assert np.all(kp[used:, 2] == 0) and np.all(kp[:used, 2] > 0)
            vis = kp[kp[:, 2] == 2]
            x1, y1, x2, y2 = o.box
            assert np.all((vis[:, 0] >= x1) & (vis[:, 0] <= x2) & (vis[:, 1] >= y1) & (vis[:, 1] <= y2))
            seen_occluded |= bool((kp[:, 2] == 1).any())
    assert seen_occluded  # occlusion really happens


def test_keypoints_start_at_the_top():
    scene = render_objects([ObjectSpec("triangle", "red", (64.0, 64.0), 30.0, 0.3)], 128, np.random.default_rng(0))
    kp = scene.objects[0].keypoints[:3]
    assert kp[0, 1] == kp[:, 1].min()


def test_render_objects_and_bad_specs():
    specs = [ObjectSpec("circle", "red", (30.0, 30.0), 12.0), ObjectSpec("star", "blue", (90.0, 90.0), 20.0, 0.5, 1)]
    scene = render_objects(specs, 128, np.random.default_rng(1))
    assert [o.kind for o in scene.objects] == ["circle", "star"]
    assert abs(scene.objects[0].area - np.pi * 144) < 0.05 * np.pi * 144
    with pytest.raises(ValueError, match="unknown shape kind"):
        ObjectSpec("blob", "red", (1.0, 1.0), 3.0)
    with pytest.raises(ValueError, match="unknown colour"):
        ObjectSpec("circle", "teal", (1.0, 1.0), 3.0)
    with pytest.raises(ValueError, match="n_objects"):
        sample_scene(np.random.default_rng(0), 128, n_objects=9)


def test_render_is_fast():
    import time

    scenes = _scenes(10)
    t = time.perf_counter()
    for s in scenes:
        render(s)
    assert (time.perf_counter() - t) / 10 < 0.02
