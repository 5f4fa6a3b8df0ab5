import re

import numpy as np
import pytest

from mllm.codec import LocationCodec
from mllm.vocab import IMAGE_TOKEN, REGION_TOKEN, phrase_before, route_names_in
from shapesworld.constants import NUM_KEYPOINTS
from shapesworld.oracle import read_objects
from shapesworld.tasks import TASKS, ShapesWorldDataset, article, corpus, make_sample, phrasings

ROUTE_RE = re.compile(r"\[(DET|SEG|GRD|POSE|GEN|EDIT)\]")
EXPECTED_ROUTES = {"grounding": {"GRD"}, "detection": {"DET"}, "segmentation": {"SEG"}, "keypoints": {"POSE"},
                   "generation": {"GEN"}, "editing": {"EDIT"}}


def _check_sample(s, task, size=128):
    assert s.task == task
    if s.image is None:
        assert task == "generation" and not s.instruction.startswith(IMAGE_TOKEN)
    else:
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert s.instruction.startswith(IMAGE_TOKEN + "\n")
    assert s.instruction.count(REGION_TOKEN) == len(s.regions)
    assert s.answer and "_Q]" not in s.answer
    tokens = list(ROUTE_RE.finditer(s.answer))
    assert [m.group(1) for m in tokens] == [t.route for t in s.targets] == route_names_in(s.answer)
    for m, t in zip(tokens, s.targets, strict=True):
        assert phrase_before(s.answer[: m.start()]) == t.phrase, (s.answer, t.phrase)
        assert t.boxes.dtype == np.float32 and t.boxes.ndim == 2 and t.boxes.shape[1] == 4
        if t.masks is not None:
            assert t.masks.shape == (len(t.boxes), size, size)
        if t.route == "POSE":
            assert t.keypoints.shape == (len(t.boxes), NUM_KEYPOINTS, 3)
        if t.route in ("GEN", "EDIT"):
            assert t.image.shape == (size, size, 3) and len(t.objects) == len(t.boxes) > 0
    if task in EXPECTED_ROUTES:
        assert {t.route for t in s.targets} == EXPECTED_ROUTES[task]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_makes_valid_samples(task):
    for i in range(6):
        _check_sample(make_sample(task, np.random.default_rng(i), location_bins=32), task)


@pytest.mark.parametrize("task", TASKS)
def test_at_least_ten_phrasings(task):
    assert len(set(phrasings(task))) >= 10


def test_routed_detection_targets_match_categories():
    for i in range(10):
        s = make_sample("detection", np.random.default_rng(i))
        assert [t.phrase for t in s.targets] == s.classes
        for t in s.targets:
            parts = t.phrase.split()
            want = [o for o in s.scene.objects if o.kind == parts[-1] and (len(parts) == 1 or o.color == parts[0])]
            assert len(t.boxes) == len(want)


def test_native_detection_decodes_to_ground_truth_boxes():
    codec = LocationCodec(1000)
    for i in range(10):
        s = make_sample("native_detection", np.random.default_rng(i), location_bins=1000)
        groups = codec.find_groups(s.answer)
        truth = sorted(tuple(o.box) for o in s.scene.objects
                       if any(o.kind == c.split()[-1] and (len(c.split()) == 1 or o.color == c.split()[0])
                              for c in s.classes))
        decoded = sorted(tuple(codec.decode_box(run, (128, 128))) for _, run, _ in groups)
        assert len(decoded) == len(truth)
        assert np.allclose(decoded, truth, atol=128 / 1000)
        assert all(cls is not None and cls < len(s.classes) for cls, _, _ in groups)


def test_polygon_has_requested_points():
    from mllm.localize import localize_request

    codec = LocationCodec(1000)
    counts = set()
    for i in range(40):
        s = make_sample("polygon", np.random.default_rng(i))
        n = localize_request(s.instruction).points  # read from the instruction as the pipeline reads it
        counts.add(n)
        for _, run, _ in codec.find_groups(s.answer):
            assert len(codec.decode_points(run, (128, 128))) == 2 * n, s.instruction
    assert len(counts) >= 10  # the corpus holds many point counts, not a handful


def test_generation_and_editing_targets_read_back_by_oracle():
    for task in ("generation", "editing"):
        for i in range(3):
            t = make_sample(task, np.random.default_rng(i)).targets[0]
            found = sorted((o.kind, o.color) for o in read_objects(t.image))
            assert found == sorted((o["kind"], o["color"]) for o in t.objects)


def test_editing_changes_the_image():
    s = make_sample("editing", np.random.default_rng(5))
    assert not np.array_equal(s.image, s.targets[0].image)


def test_dataset_is_deterministic_per_index():
    a = ShapesWorldDataset("val", 12, seed=1, location_bins=32)
    b = ShapesWorldDataset("val", 12, seed=1, location_bins=32)
    for i in (0, 7, 11):
        sa, sb = a[i], b[i]
        assert (sa.task, sa.instruction, sa.answer) == (sb.task, sb.instruction, sb.answer)
        assert (sa.image is None and sb.image is None) or np.array_equal(sa.image, sb.image)
    train = ShapesWorldDataset("train", 12, seed=1, location_bins=32)
    assert [train[i].answer for i in range(4)] != [a[i].answer for i in range(4)]
    only = ShapesWorldDataset("train", 5, tasks=["vqa"], location_bins=32)
    assert {only[i].task for i in range(5)} == {"vqa"}
    with pytest.raises(ValueError, match="unknown split"):
        ShapesWorldDataset("dev", 3)
    with pytest.raises(ValueError, match="unknown tasks"):
        ShapesWorldDataset("train", 3, tasks=["dance"])
    with pytest.raises(IndexError):
        a[12]


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="accepted"):
        make_sample("dance", np.random.default_rng(0))


def test_corpus_yields_instruction_and_answer():
    texts = list(corpus(5))
    assert len(texts) == 5 and all("\n" in t for t in texts)


def test_region_and_vqa_answers_are_true():
    for i in range(12):
        s = make_sample("region", np.random.default_rng(i))
        region = s.regions[0]
        if "point" in region:
            x, y = region["point"]
            hits = [o for o in s.scene.objects if o.mask[int(y), int(x)]]
        elif "box" in region:
            hits = [o for o in s.scene.objects if o.box.tolist() == region["box"]]
        else:
            hits = [o for o in s.scene.objects if np.array_equal(o.mask, region["mask"])]
        assert len(hits) == 1
        assert s.answer in (hits[0].color, hits[0].kind, f"a {hits[0].color} {hits[0].kind}",
                            f"an {hits[0].color} {hits[0].kind}")
    numbers = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
    for i in range(20):
        s = make_sample("vqa", np.random.default_rng(i))
        q = s.instruction.split("\n", 1)[1]
        if q.startswith("How many") and q.endswith("shapes are there?"):
            color = q.split()[2]
            assert s.answer == numbers[sum(o.color == color for o in s.scene.objects)]
        assert len(s.answer.split()) <= 2


def test_caption_mentions_every_object():
    s = make_sample("caption", np.random.default_rng(2))
    assert s.answer.endswith(".")
    for o in s.scene.objects:
        assert o.color in s.answer and o.kind in s.answer


def test_polygon_points_trace_the_mask():
    from PIL import Image, ImageDraw

    from shapesworld.scene import sample_scene
    from shapesworld.tasks import polygon_points

    ious = []
    for o in sample_scene(np.random.default_rng(4), 128, n_objects=5).objects:
        im = Image.new("L", (512, 512))
        ImageDraw.Draw(im).polygon([tuple(p * 4) for p in polygon_points(o.mask, 16)], fill=1)
        poly = np.asarray(im, float).reshape(128, 4, 128, 4).mean((1, 3)) > 0.5
        ious.append((poly & o.mask).sum() / (poly | o.mask).sum())
    assert np.mean(ious) > 0.85


_DIGEST = """
import hashlib
from router.config import load_config
from router.sources import data_tokenizer
from shapesworld.tasks import corpus
cfg = load_config("tiny")
print(hashlib.md5("\\n".join(corpus(300, image_size=64, location_bins=64)).encode()).hexdigest())
print(hashlib.md5("\\n".join(corpus(40, image_size=64, location_bins=64, wording="heldout")).encode()).hexdigest())
print(hashlib.md5(data_tokenizer(cfg).backend_tokenizer.to_str().encode()).hexdigest())
"""


def test_samples_and_tokenizer_do_not_depend_on_the_process():
    """Python salts str hashes per process: any set-of-strings order leaking into the data would make
    a resumed run (or a second replica) see other samples and other token ids than the first."""
    import os
    import subprocess
    import sys

    digests = []
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True)
        digests.append(out.stdout.split())
    assert digests[0] == digests[1] == digests[2]


def test_scribble_prompts_lie_on_the_object_they_ask_about():
    from mllm.scribble import rasterize_scribble

    for i in range(8):
        s = make_sample("scribble", np.random.default_rng(i))
        (region,) = s.regions
        drawn = rasterize_scribble(region["scribble"], region["width"], (128, 128))
        on = [o for o in s.scene.objects if (o.mask & drawn).sum() >= 0.8 * drawn.sum()]
        assert on, s.instruction
        assert s.answer in {on[0].color, on[0].kind, f"{article(on[0].color)} {on[0].color} {on[0].kind}"}
