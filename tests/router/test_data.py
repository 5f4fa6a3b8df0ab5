"""Data formats into TaskSample, on tiny fixture files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mllm.vocab import route_names_in
from router.data import DataFormatError, load_coco, load_llava, load_refcoco, load_shapesworld


def _png(path: Path, w: int = 40, h: int = 30) -> None:
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)


@pytest.fixture()
def coco_dir(tmp_path: Path) -> Path:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    square = np.zeros((30, 40), np.uint8)
    square[5:15, 10:20] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode("ascii")
    kps = [12, 6, 2, 18, 6, 2, 0, 0, 0]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "red dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 2, "bbox": [10, 5, 10, 10], "segmentation": rle,
             "iscrowd": 0, "keypoints": kps, "num_keypoints": 2},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4],
             "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "iscrowd": 0, "keypoints": [0] * 9, "num_keypoints": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [30, 20, 5, 5],
             "segmentation": [[30, 20, 35, 20, 35, 25, 30, 25]], "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2], "segmentation": [[1, 1, 3, 1, 3, 3]],
             "iscrowd": 1},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return tmp_path


def test_coco_detection_and_segmentation(coco_dir):
    (det,) = load_coco(coco_dir / "instances.json", coco_dir, "detection")  # image 2 holds only a crowd
    assert det.instruction == "<image>\nDetect red dog and cat."
    assert det.answer == "Sure, red dog [DET] and cat [DET]."
    assert [t.phrase for t in det.targets] == ["red dog", "cat"] and det.classes == ["red dog", "cat"]
    assert det.targets[0].boxes.tolist() == [[10, 5, 20, 15]] and len(det.targets[1].boxes) == 2
    assert route_names_in(det.answer) == [t.route for t in det.targets]
    (seg,) = load_coco(coco_dir / "instances.json", coco_dir, "segmentation")
    assert seg.targets[0].masks.shape == (1, 30, 40) and seg.targets[0].masks.sum() == 100
    assert seg.targets[1].masks.shape == (2, 30, 40) and seg.targets[1].masks[1].sum() > 0  # from a polygon


def test_coco_keypoints_keep_only_annotated_instances(coco_dir):
    (pose,) = load_coco(coco_dir / "instances.json", coco_dir, "keypoints")
    assert pose.answer == "Sure, red dog [POSE]."
    assert pose.targets[0].keypoints.shape == (1, 3, 3) and pose.targets[0].keypoints[0, 1].tolist() == [18, 6, 2]


def test_refcoco_sentences_become_grounding_samples(coco_dir):
    refs = [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val",
             "sentences": [{"sent": "red dog on the left"}, {"sent": "the furry one"}]},
            {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train", "sentences": [{"sent": "small cat"}]}]
    (coco_dir / "refs.json").write_text(json.dumps(refs))
    samples = list(load_refcoco(coco_dir / "refs.json", coco_dir / "instances.json", coco_dir, split="val"))
    assert [s.answer for s in samples] == ["Sure, the red dog on the left [GRD].", "Sure, the furry one [GRD]."]
    assert samples[0].instruction == "<image>\nFind the red dog on the left."
    assert samples[0].targets[0].phrase == "red dog on the left"
    assert samples[0].targets[0].boxes.tolist() == [[10, 5, 20, 15]] and samples[0].targets[0].masks.sum() == 100
    refs[0]["ann_id"] = 999
    (coco_dir / "refs.json").write_text(json.dumps(refs))
    with pytest.raises(DataFormatError, match="ann_id 999"):
        list(load_refcoco(coco_dir / "refs.json", coco_dir / "instances.json", coco_dir))


def test_llava_conversations_become_text_samples(tmp_path):
    _png(tmp_path / "x.png")
    rows = [{"id": "1", "image": "x.png", "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "A grey square."},
                {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "grey"}]},
            {"id": "2", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}]
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    a, b, c = load_llava(path)
    assert (a.task, a.instruction, a.answer) == ("caption", "<image>\nDescribe the image.", "A grey square.")
    assert (b.task, b.instruction, b.answer) == ("vqa", "<image>\nWhat colour is it?", "grey")
    assert b.image.shape == (30, 40, 3) and c.image is None and c.instruction == "Hi?"
    rows[1]["conversations"].reverse()
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataFormatError, match="expected \\(human, gpt\\)"):
        list(load_llava(path))


def test_shapesworld_export_round_trips(tmp_path):
    from shapesworld.export import export_split
    from shapesworld.tasks import ShapesWorldDataset

    export_split("val", 6, seed=0, out=tmp_path, image_size=64, location_bins=32)
    loaded = list(load_shapesworld(tmp_path))
    original = ShapesWorldDataset("val", 6, seed=0, image_size=64, location_bins=32)
    assert len(loaded) == 6
    for got, want in zip(loaded, (original[i] for i in range(6)), strict=True):
        assert (got.task, got.instruction, got.answer, got.classes) == (want.task, want.instruction, want.answer, want.classes)
        assert (got.image is None) == (want.image is None)
        if want.image is not None:
            assert np.array_equal(got.image, want.image)
        assert len(got.targets) == len(want.targets)
        for g, w in zip(got.targets, want.targets, strict=True):
            assert g.route == w.route and g.phrase == w.phrase and np.allclose(g.boxes, w.boxes)
            assert (g.masks is None) == (w.masks is None)
            if w.masks is not None and len(w.masks):
                assert np.array_equal(g.masks, w.masks)
            if w.image is not None:
                assert np.array_equal(g.image, w.image)
