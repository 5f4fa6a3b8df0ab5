"""Export a split: PNG images, COCO instances JSON (boxes, RLE masks, keypoints) and LLaVA-style JSONL."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from router.samples import RouteTarget, TaskSample
from shapesworld.constants import KEYPOINT_NAMES, KINDS, NUM_KEYPOINTS
from shapesworld.scene import Scene
from shapesworld.tasks import ShapesWorldDataset


def rle_encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE {"size": [H, W], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_categories() -> list[dict]:
    return [{"id": i + 1, "name": k, "supercategory": "shape", "keypoints": list(KEYPOINT_NAMES), "skeleton": []}
            for i, k in enumerate(KINDS)]


def coco_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """One COCO annotation per scene object (bbox xywh, RLE mask, flat keypoints)."""
    anns = []
    for k, o in enumerate(scene.objects):
        x1, y1, x2, y2 = (float(v) for v in o.box)
        kps = o.keypoints.reshape(NUM_KEYPOINTS, 3)
        anns.append({
            "id": first_id + k, "image_id": image_id, "category_id": o.category_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(o.area), "iscrowd": 0,
            "segmentation": rle_encode(o.mask),
            "keypoints": [round(float(v), 3) for v in kps.ravel()], "num_keypoints": int((kps[:, 2] > 0).sum()),
            "color": o.color, "depth": int(o.depth),
        })
    return anns


def _save_png(image: np.ndarray | None, out: Path, stem: str) -> str | None:
    """Write `image` to out/images/<stem>.png and return that path relative to out; None when there is no image."""
    if image is None:
        return None
    rel = f"images/{stem}.png"
    Image.fromarray(image).save(out / rel)
    return rel


def _target_json(t: RouteTarget, out: Path, stem: str) -> dict:
    return {
        "route": t.route, "phrase": t.phrase, "boxes": np.asarray(t.boxes).tolist(),
        "masks": [rle_encode(m) for m in t.masks] if t.masks is not None else None,
        "keypoints": np.asarray(t.keypoints).tolist() if t.keypoints is not None else None,
        "image": _save_png(t.image, out, stem), "objects": t.objects,
    }


def _region_json(region: dict) -> dict:
    if "mask" in region:
        return {"mask": rle_encode(np.asarray(region["mask"], bool))}
    if "scribble" in region:
        return {"scribble": [[[float(x), float(y)] for x, y in line] for line in region["scribble"]],
                "width": float(region["width"])}
    return {k: [float(v) for v in val] for k, val in region.items()}


def sample_record(sample: TaskSample, sid: str, out: Path) -> dict:
    """The JSONL record of one sample; writes its input and target images under out/images/."""
    return {
        "id": sid, "image": _save_png(sample.image, out, sid), "task": sample.task,
        "conversations": [{"from": "human", "value": sample.instruction}, {"from": "gpt", "value": sample.answer}],
        "targets": [_target_json(t, out, f"{sid}_target{j}") for j, t in enumerate(sample.targets)],
        "classes": list(sample.classes), "regions": [_region_json(r) for r in sample.regions],
        **({"heldout_wording": list(sample.heldout_wording)} if sample.heldout_wording else {}),
    }


def export_split(split: str, n: int, seed: int, out: str | Path, image_size: int = 128,
                 location_bins: int = 1000, wording: str = "template") -> dict:
    """Write out/images/*.png, out/instances.json (COCO) and out/samples.jsonl; return a summary.

    `wording` words the instructions: "template", "train" or "heldout" (shapesworld.grammar).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    data = ShapesWorldDataset(split, n, seed=seed, image_size=image_size, location_bins=location_bins, wording=wording)
    coco: dict = {"info": {"description": f"ShapesWorld {split} (seed {seed})"}, "images": [], "annotations": [],
                  "categories": coco_categories()}
    tasks: Counter[str] = Counter()
    with open(out / "samples.jsonl", "w") as f:
        for i in tqdm(range(n), desc=f"ShapesWorld {split}", unit="sample"):
            sample, sid = data[i], f"{split}_{seed}_{i:06d}"
            record = sample_record(sample, sid, out)
            tasks[sample.task] += 1
            if sample.scene is not None and sample.image is not None:
                coco["images"].append({"id": i + 1, "file_name": Path(record["image"]).name,
                                       "width": image_size, "height": image_size})
                coco["annotations"] += coco_annotations(sample.scene, i + 1, len(coco["annotations"]) + 1)
            f.write(json.dumps(record) + "\n")
    (out / "instances.json").write_text(json.dumps(coco))
    return {"split": split, "samples": n, "images": len(coco["images"]), "annotations": len(coco["annotations"]),
            "tasks": dict(sorted(tasks.items())), "instances": str(out / "instances.json"),
            "samples_jsonl": str(out / "samples.jsonl"), "out": str(out)}
