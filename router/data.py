"""Data formats, read into one sample schema: router.samples.TaskSample.

    load_shapesworld(dir)                       samples.jsonl + images/ written by `superlink world export`
    load_coco(instances.json, image_root)       COCO instances / person_keypoints -> detection, segmentation,
                                                keypoint samples ("Detect cat, dog." -> "Sure, cat [DET] and dog [DET].")
    load_refcoco(refs.json, instances.json, image_root)
                                                RefCOCO-style refs (sentences + ann_id) -> grounding samples
    load_llava(conversations.json[l], image_root)
                                                LLaVA conversations -> caption / VQA text samples, one per turn

Every loader is lazy (a generator), reads images with mllm.images.load_image, and
fails loudly naming the file and record when an entry is malformed. Answers are
written in SuperLink's conventions (mllm/vocab.py), and each RouteTarget's phrase is
what `phrase_before` reads before its routing token, as the model will see it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from mllm.images import ImageError, load_image
from mllm.vocab import IMAGE_TOKEN, phrase_before
from router.samples import RouteTarget, TaskSample

MAX_PIXELS = 4096 * 4096
CAPTION_WORDS = ("describe", "caption", "what is in this", "what do you see", "summar")


class DataFormatError(ValueError):
    """A data file or record does not follow its format; the message names the file and the entry."""


# ---- shared helpers ------------------------------------------------------------------------------
def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image file."""
    if not path.is_file():
        raise DataFormatError(f"image file {path} does not exist")
    try:
        return np.array(load_image(path.read_bytes(), max_pixels))
    except ImageError as err:
        raise DataFormatError(f"{path}: {err}") from None


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygons, RLE or uncompressed RLE) -> (H, W) bool."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict):
        counts = seg["counts"]
        rle = {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise DataFormatError(f"segmentation must be polygons or RLE, got {type(seg).__name__}")
    return mask_utils.decode(rle).astype(bool)


def xywh_to_xyxy(b: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y + h]


def join_words(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def routed_answer(phrases: Sequence[str], route: str) -> tuple[str, list[str]]:
    """"Sure, cat [DET] and dog [DET]." and the phrase phrase_before reads for each routing token."""
    parts = [f"{p} [{route}]" for p in phrases]
    answer = "Sure, " + join_words(parts) + "."
    starts = [m.start() for m in re.finditer(re.escape(f"[{route}]"), answer)]
    return answer, [phrase_before(answer[:i]) for i in starts]  # what the model reads before each token


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataFormatError(f"{path}: cannot read JSON ({err})") from None


def _need(record: dict, key: str, where: str) -> Any:
    if key not in record:
        raise DataFormatError(f"{where}: missing field {key!r}")
    return record[key]


# ---- ShapesWorld exports ---------------------------------------------------------------------------
def load_shapesworld(export_dir: str | Path) -> Iterator[TaskSample]:
    """Samples of a `superlink world export` folder (samples.jsonl + images/)."""
    root = Path(export_dir)
    path = root / "samples.jsonl"
    if not path.is_file():
        raise DataFormatError(f"{root}: samples.jsonl missing; expected a folder written by `superlink world export`")
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield shapesworld_sample(json.loads(line), root, f"{path}:{line_no}")


def shapesworld_sample(rec: dict, root: Path, where: str) -> TaskSample:
    human, gpt = _turns(_need(rec, "conversations", where), where)[0]
    image = read_image(root / rec["image"]) if rec.get("image") else None
    targets = [_shapesworld_target(t, root, image) for t in rec.get("targets", [])]
    regions = [_shapesworld_region(r) for r in rec.get("regions", [])]
    return TaskSample(_need(rec, "task", where), image, human, gpt, targets, regions=regions,
                      classes=list(rec.get("classes", [])))


def _shapesworld_target(t: dict, root: Path, image: np.ndarray | None) -> RouteTarget:
    boxes = np.asarray(t["boxes"], np.float32).reshape(-1, 4)
    masks = None
    if t.get("masks") is not None:  # each RLE carries its own size (GEN targets have no input image)
        h, w = t["masks"][0]["size"] if t["masks"] else (image.shape[:2] if image is not None else (0, 0))
        masks = np.asarray([decode_segmentation(m, *m["size"]) for m in t["masks"]], bool).reshape(-1, h, w)
    kps = np.asarray(t["keypoints"], np.float32) if t.get("keypoints") is not None else None
    target_image = read_image(root / t["image"]) if t.get("image") else None
    return RouteTarget(t["route"], t["phrase"], boxes, masks, kps, target_image, t.get("objects"))


def _shapesworld_region(r: dict) -> dict:
    if "mask" in r:
        h, w = r["mask"]["size"]
        return {"mask": decode_segmentation(r["mask"], h, w)}
    return dict(r)


# ---- LLaVA conversations ----------------------------------------------------------------------------
def _turns(conversations: list[dict], where: str) -> list[tuple[str, str]]:
    """[(human, gpt), ...] from a LLaVA conversation list."""
    if not isinstance(conversations, list) or len(conversations) < 2 or len(conversations) % 2:
        raise DataFormatError(f"{where}: conversations must alternate human/gpt turns, got {len(conversations or [])}")
    out = []
    for k in range(0, len(conversations), 2):
        h, g = conversations[k], conversations[k + 1]
        if h.get("from") != "human" or g.get("from") != "gpt":
            raise DataFormatError(f"{where}: turn {k // 2} is ({h.get('from')}, {g.get('from')}); expected (human, gpt)")
        out.append((str(h["value"]), str(g["value"])))
    return out


def load_llava(path: str | Path, image_root: str | Path | None = None) -> Iterator[TaskSample]:
    """LLaVA-style conversations (a JSON list or JSONL) -> one caption/VQA sample per turn."""
    path = Path(path)
    for k, rec in enumerate(read_llava_records(path)):
        yield from llava_samples(rec, Path(image_root) if image_root else path.parent, f"{path}[{k}]")


def read_llava_records(path: Path) -> Iterator[dict]:
    """The records of a LLaVA conversations file: a JSON list (.json) or one JSON object per line."""
    if path.suffix == ".json":
        records = read_json(path)
        if not isinstance(records, list):
            raise DataFormatError(f"{path}: expected a JSON list of conversation records, got {type(records).__name__}")
        yield from records
        return
    try:
        f = path.open()
    except OSError as err:
        raise DataFormatError(f"{path}: cannot read ({err})") from None
    with f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{path}:{line_no}: not a JSON object ({err})") from None


def llava_samples(rec: dict, image_root: Path, where: str) -> Iterator[TaskSample]:
    image = read_image(image_root / rec["image"]) if rec.get("image") else None
    for human, gpt in _turns(_need(rec, "conversations", where), where):
        task, instruction, answer = llava_turn(human, gpt, image is not None)
        yield TaskSample(task, image, instruction, answer, [])


def llava_turns(rec: dict, where: str) -> list[tuple[str, str, str]]:
    """(task, instruction, answer) of each turn of a LLaVA record, without reading its image."""
    return [llava_turn(h, g, bool(rec.get("image"))) for h, g in _turns(_need(rec, "conversations", where), where)]


def llava_turn(human: str, gpt: str, has_image: bool) -> tuple[str, str, str]:
    """One human/gpt turn -> (task "caption" or "vqa", instruction, answer)."""
    question = human.replace(IMAGE_TOKEN, "").strip()
    instruction = f"{IMAGE_TOKEN}\n{question}" if has_image else question
    task = "caption" if any(w in question.lower() for w in CAPTION_WORDS) else "vqa"
    return task, instruction, gpt.strip()


# ---- COCO instances / keypoints -------------------------------------------------------------------
CocoTask = Literal["detection", "segmentation", "keypoints"]
_ROUTE: dict[str, str] = {"detection": "DET", "segmentation": "SEG", "keypoints": "POSE"}
_VERB: dict[str, str] = {"detection": "Detect", "segmentation": "Segment", "keypoints": "Find the keypoints of"}


def load_coco(
    instances: str | Path, image_root: str | Path, task: CocoTask = "detection", skip_crowd: bool = True
) -> Iterator[TaskSample]:
    """One sample per image listing the categories present; targets per category in that order."""
    coco = read_json(Path(instances))
    cats = coco_categories(coco, str(instances))
    for img, anns in coco_groups(coco, task, str(instances), skip_crowd):
        yield coco_sample(img, anns, cats, Path(image_root), task, f"{instances} image {img['id']}")


def coco_categories(coco: dict, where: str) -> dict[int, str]:
    return {c["id"]: c["name"] for c in _need(coco, "categories", where)}


def coco_groups(coco: dict, task: CocoTask, where: str, skip_crowd: bool = True) -> list[tuple[dict, list[dict]]]:
    """(image record, its annotations) for every image with at least one annotation usable for `task`."""
    if task not in _ROUTE:
        raise DataFormatError(f"unknown COCO task {task!r}; accepted: {list(_ROUTE)}")
    by_image: dict[int, list[dict]] = {}
    for ann in _need(coco, "annotations", where):
        if not (skip_crowd and ann.get("iscrowd")) and (task != "keypoints" or ann.get("num_keypoints", 0) > 0):
            by_image.setdefault(ann["image_id"], []).append(ann)
    return [(img, by_image[img["id"]]) for img in _need(coco, "images", where) if by_image.get(img["id"])]


def coco_text(anns: list[dict], cats: dict[int, str], task: CocoTask) -> tuple[list[str], str, str, list[str]]:
    """Categories present (first-seen order), instruction, answer and each routing token's phrase."""
    names = list(dict.fromkeys(cats[a["category_id"]] for a in anns))
    answer, phrases = routed_answer(names, _ROUTE[task])
    return names, f"{IMAGE_TOKEN}\n{_VERB[task]} {join_words(names)}.", answer, phrases


def coco_sample(img: dict, anns: list[dict], cats: dict[int, str], root: Path, task: CocoTask, where: str) -> TaskSample:
    image = read_image(root / _need(img, "file_name", where))
    h, w = image.shape[:2]
    names, instruction, answer, phrases = coco_text(anns, cats, task)
    targets = [_coco_target([a for a in anns if cats[a["category_id"]] == n], phrase, task, h, w)
               for n, phrase in zip(names, phrases, strict=True)]
    return TaskSample(task, image, instruction, answer, targets, classes=names)


def _coco_target(anns: list[dict], phrase: str, task: CocoTask, h: int, w: int) -> RouteTarget:
    boxes = np.asarray([xywh_to_xyxy(a["bbox"]) for a in anns], np.float32).reshape(-1, 4)
    masks = None
    if task == "segmentation":
        masks = np.asarray([decode_segmentation(a["segmentation"], h, w) for a in anns], bool).reshape(-1, h, w)
    kps = None
    if task == "keypoints":
        kps = np.asarray([a["keypoints"] for a in anns], np.float32).reshape(len(anns), -1, 3)
    return RouteTarget(_ROUTE[task], phrase, boxes, masks, kps)


# ---- RefCOCO-style referring expressions ---------------------------------------------------------
def load_refcoco(
    refs: str | Path, instances: str | Path, image_root: str | Path, split: str | None = None
) -> Iterator[TaskSample]:
    """One grounding sample per referring sentence: "Find the {sent}." -> "Sure, the {sent} [GRD]."."""
    coco = read_json(Path(instances))
    anns = {a["id"]: a for a in _need(coco, "annotations", str(instances))}
    images = {i["id"]: i for i in _need(coco, "images", str(instances))}
    ref_list = read_json(Path(refs))
    cache: dict[int, np.ndarray] = {}
    for k, ref in enumerate(ref_list):
        where = f"{refs}[{k}]"
        if split is not None and ref.get("split") != split:
            continue
        ann = anns.get(_need(ref, "ann_id", where))
        if ann is None:
            raise DataFormatError(f"{where}: ann_id {ref['ann_id']} is not in {instances}")
        img = images[ann["image_id"]]
        if img["id"] not in cache:
            cache = {img["id"]: read_image(Path(image_root) / img["file_name"])}  # refs of one image come together
        for sent in refcoco_sentences(ref, where):
            yield refcoco_sample(cache[img["id"]], ann, sent)


def refcoco_text(sentence: str) -> tuple[str, str]:
    """A referring sentence -> (instruction, answer): "Find the {expr}." -> "Sure, the {expr} [GRD]."."""
    expr = re.sub(r"^the\s+", "", sentence.strip().rstrip("."), flags=re.IGNORECASE)  # "Sure, the {expr}"
    return f"{IMAGE_TOKEN}\nFind the {expr}.", f"Sure, the {expr} [GRD]."


def refcoco_sentences(ref: dict, where: str) -> list[str]:
    return [str(s["sent"] if isinstance(s, dict) else s) for s in _need(ref, "sentences", where)]


def refcoco_sample(image: np.ndarray, ann: dict, sentence: str) -> TaskSample:
    h, w = image.shape[:2]
    instruction, answer = refcoco_text(sentence)
    box = np.asarray([xywh_to_xyxy(ann["bbox"])], np.float32)
    masks = decode_segmentation(ann["segmentation"], h, w)[None] if ann.get("segmentation") else None
    target = RouteTarget("GRD", phrase_before(answer[: answer.index("[GRD]")]), box, masks)
    return TaskSample("grounding", image, instruction, answer, [target])
