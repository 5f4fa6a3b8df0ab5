import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shapesworld.constants import KEYPOINT_SIGMAS, NUM_KEYPOINTS
from shapesworld.export import export_split


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("val")
    summary = export_split(split="val", n=40, seed=0, out=out, image_size=128, location_bins=100)
    return out, summary


def test_files_and_summary(exported):
    out, summary = exported
    assert summary["samples"] == 40 and summary["images"] > 0 and summary["annotations"] > summary["images"]
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 40
    for line in lines:
        rec = json.loads(line)
        assert rec["conversations"][0]["from"] == "human" and rec["conversations"][1]["from"] == "gpt"
        assert rec["image"] is None or (out / rec["image"]).is_file()
        for t in rec["targets"]:
            assert t["image"] is None or (out / t["image"]).is_file()
            for m in t["masks"] or []:
                assert mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()}).shape == (128, 128)


def _quiet(fn):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _evaluate(gt: COCO, dets: list[dict], iou_type: str) -> float:
    dt = _quiet(lambda: gt.loadRes(dets))
    ev = COCOeval(gt, dt, iou_type)
    if iou_type == "keypoints":
        ev.params.kpt_oks_sigmas = np.asarray(KEYPOINT_SIGMAS)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return float(ev.stats[0])


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_ground_truth_scores_perfect_ap(exported, iou_type):
    out, _ = exported
    gt = _quiet(lambda: COCO(str(out / "instances.json")))
    anns = gt.loadAnns(gt.getAnnIds())
    assert all(len(a["keypoints"]) == 3 * NUM_KEYPOINTS for a in anns)
    dets = []
    for a in anns:
        d = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}
        d.update({"bbox": a["bbox"]} if iou_type == "bbox" else {})
        d.update({"segmentation": a["segmentation"]} if iou_type == "segm" else {})
        d.update({"keypoints": a["keypoints"]} if iou_type == "keypoints" else {})
        dets.append(d)
    assert _evaluate(gt, dets, iou_type) == pytest.approx(1.0)
    shifted = [dict(d, bbox=[d["bbox"][0] + 8, d["bbox"][1] + 8, *d["bbox"][2:]]) for d in dets] if iou_type == "bbox" else None
    if shifted:
        assert _evaluate(gt, shifted, iou_type) < 0.9


def test_export_is_deterministic(exported, tmp_path):
    out, _ = exported
    export_split(split="val", n=3, seed=0, out=tmp_path, image_size=128, location_bins=100)
    first = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()[:3]]
    again = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert first == again
    assert Path(tmp_path / "images").is_dir()


def test_scribble_regions_export_as_json():
    import json

    import numpy as np

    from shapesworld.export import _region_json
    from shapesworld.tasks import make_sample

    region = make_sample("scribble", np.random.default_rng(0)).regions[0]
    out = json.loads(json.dumps(_region_json(region)))
    assert out["width"] == region["width"] and out["scribble"] == [[list(p) for p in line] for line in region["scribble"]]


def test_heldout_wording_export(tmp_path):
    summary = export_split(split="val", n=4, seed=0, out=tmp_path / "h", image_size=64, location_bins=32,
                           wording="heldout")
    template = export_split(split="val", n=4, seed=0, out=tmp_path / "t", image_size=64, location_bins=32)
    held = [json.loads(line) for line in open(summary["samples_jsonl"])]
    plain = [json.loads(line) for line in open(template["samples_jsonl"])]
    assert all(r["heldout_wording"] for r in held) and not any("heldout_wording" in r for r in plain)
    assert [r["conversations"][1] for r in held] == [r["conversations"][1] for r in plain]
    with pytest.raises(ValueError, match="wording"):
        export_split(split="val", n=1, seed=0, out=tmp_path / "x", wording="pirate")
