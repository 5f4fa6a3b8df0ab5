"""training.data: sources mixed by weight, file sources read once, clear errors, the data-built tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from router.config import SuperLinkConfig
from router.sources import DataMix, DataSourceError, data_tokenizer, source_names
from shapesworld.tasks import make_sample
from training.train import batch_samples, draw_batch


def _with_data(cfg: SuperLinkConfig, data: list[dict], **training) -> SuperLinkConfig:
    raw = cfg.model_dump(mode="json")
    raw["training"].update({"data": data, **training})
    return SuperLinkConfig.model_validate(raw)


def _llava(path: Path, answer: str, n: int = 3, image: str | None = None) -> Path:
    recs = [{"id": k, **({"image": image} if image else {}), "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image." if image else "Describe the image."},
        {"from": "gpt", "value": answer},
        {"from": "human", "value": "How many animals are there?"}, {"from": "gpt", "value": "two"}]}
        for k in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_without_data_batches_are_drawn_exactly_as_before(tiny_config):
    """The default (ShapesWorld alone, training.task_weights) replays the pre-`data:` draws for a seed."""
    cfg = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(
        update={"batch_size": 3, "task_weights": {"vqa": 1.0, "caption": 2.0, "grounding": 1.0}})})
    assert [s.kind for s in cfg.training.data] == ["shapesworld"]
    rng = np.random.default_rng([cfg.training.seed, 4, 1, 0])
    tasks, p = ["vqa", "caption", "grounding"], np.array([1.0, 2.0, 1.0]) / 4
    old = [make_sample(tasks[int(k)], rng, 128, 32, wording="train") for k in rng.choice(3, size=3, p=p)]
    new = batch_samples(cfg, 4, 1, 0)
    assert [(s.task, s.instruction, s.answer) for s in new] == [(s.task, s.instruction, s.answer) for s in old]


def test_rows_follow_the_source_weights_and_are_a_function_of_the_generator(tiny_config, tmp_path):
    a, b = _llava(tmp_path / "a.jsonl", "A zebra."), _llava(tmp_path / "b.jsonl", "A giraffe.")
    cfg = _with_data(tiny_config, [{"kind": "llava", "conversations": str(a), "weight": 3.0},
                                   {"kind": "llava", "conversations": str(b), "weight": 1.0, "name": "giraffes"},
                                   {"kind": "shapesworld", "weight": 0.0}], batch_size=2000)
    mix = DataMix(cfg)
    assert mix.names == ["llava0", "giraffes"]  # a weight-0 source is not opened
    samples, names = mix.draw(np.random.default_rng(0), 2000)
    share = names.count("llava0") / len(names)
    assert 0.72 < share < 0.78, share
    expected = {"llava0": {"A zebra.", "two"}, "giraffes": {"A giraffe.", "two"}}
    assert all(s.answer in expected[n] for s, n in zip(samples, names, strict=True))
    assert {s.task for s in samples} == {"caption", "vqa"} and all(s.image is None for s in samples)
    again, _ = mix.draw(np.random.default_rng(0), 2000)
    assert [s.answer for s in again] == [s.answer for s in samples]
    assert draw_batch(cfg, 3, 0, 0, mix)[1] == draw_batch(cfg, 3, 0, 0)[1]


def test_file_sources_read_coco_refcoco_and_llava_with_images(tiny_config, tmp_path):
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0,
                             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    (tmp_path / "refs.json").write_text(json.dumps([{"ann_id": 5, "split": "train", "sentences": ["the grey cat"]}]))
    cfg = _with_data(tiny_config, [
        {"kind": "coco", "annotations": str(tmp_path / "instances.json"), "images": str(tmp_path),
         "tasks": ["segmentation"]},
        {"kind": "refcoco", "refs": str(tmp_path / "refs.json"), "annotations": str(tmp_path / "instances.json"),
         "images": str(tmp_path), "split": "train"},
        {"kind": "llava", "conversations": str(_llava(tmp_path / "c.jsonl", "A cat.", image="a.png")),
         "tasks": ["vqa"]},
    ])
    samples, names = DataMix(cfg).draw(np.random.default_rng(1), 30)
    by = {n: [s for s, m in zip(samples, names, strict=True) if m == n] for n in ("coco", "refcoco", "llava")}
    assert all(by.values())
    seg = by["coco"][0]
    assert seg.task == "segmentation" and seg.answer == "Sure, cat [SEG]." and seg.targets[0].masks.shape == (1, 30, 40)
    grd = by["refcoco"][0]
    assert grd.answer == "Sure, the grey cat [GRD]." and grd.targets[0].boxes.tolist() == [[2, 3, 12, 11]]
    assert {s.task for s in by["llava"]} == {"vqa"} and by["llava"][0].image.shape == (30, 40, 3)


def test_a_bad_source_names_itself_and_what_was_expected(tiny_config, tmp_path):
    missing = tmp_path / "nowhere" / "instances.json"
    cfg = _with_data(tiny_config, [{"kind": "shapesworld"},
                                   {"kind": "coco", "annotations": str(missing), "images": str(tmp_path)}])
    with pytest.raises(DataSourceError, match=r"training.data 'coco' \(coco\): .*nowhere/instances.json is not a "
                                              r"file; expected a COCO instances or person_keypoints JSON"):
        DataMix(cfg)
    (tmp_path / "broken.jsonl").write_text('{"conversations": [{"from": "human", "value": "hi"}]}\n')
    cfg = _with_data(tiny_config, [{"kind": "llava", "name": "chat", "conversations": str(tmp_path / "broken.jsonl")}])
    with pytest.raises(DataSourceError, match=r"training.data 'chat' \(llava\): .*alternate human/gpt"):
        DataMix(cfg)
    (tmp_path / "refs.json").write_text(json.dumps([{"ann_id": 99, "sentences": ["the cat"]}]))
    (tmp_path / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    cfg = _with_data(tiny_config, [{"kind": "refcoco", "refs": str(tmp_path / "refs.json"),
                                    "annotations": str(tmp_path / "instances.json"), "images": str(tmp_path)}])
    with pytest.raises(DataSourceError, match=r"training.data 'refcoco' \(refcoco\): .*ann_id 99 is not in"):
        DataMix(cfg)
    with pytest.raises(ValidationError, match="weight 0"):
        _with_data(tiny_config, [{"kind": "shapesworld", "weight": 0.0}])
    with pytest.raises(ValidationError, match="kind"):
        _with_data(tiny_config, [{"kind": "imagenet", "weight": 1.0}])
    with pytest.raises(DataSourceError, match="unknown tasks"):
        DataMix(_with_data(tiny_config, [{"kind": "shapesworld", "task_weights": {"dance": 1.0}}]))


def test_source_names_number_repeated_kinds():
    from router.config import ShapesWorldSource

    data = [ShapesWorldSource(kind="shapesworld"), ShapesWorldSource(kind="shapesworld", name="x"),
            ShapesWorldSource(kind="shapesworld")]
    assert source_names(data) == ["shapesworld0", "x", "shapesworld2"]


def test_the_tokenizer_learns_the_file_sources_texts(tiny_config, tmp_path):
    path = _llava(tmp_path / "z.jsonl", "A zebra grazes beside another zebra.", n=40)
    cfg = _with_data(tiny_config, [{"kind": "shapesworld"}, {"kind": "llava", "conversations": str(path)}])
    plain, mixed = data_tokenizer(tiny_config), data_tokenizer(cfg)
    assert len(mixed.tokenize(" zebra")) < len(plain.tokenize(" zebra"))
    assert data_tokenizer(cfg).get_vocab() == mixed.get_vocab()  # same config, same files: same tokenizer


def test_the_tokenizer_learns_the_words_as_the_model_reads_them():
    """Answer words whole (a count is one decision, not " " then "one"), instructions lower-cased as the
    processor gives them, the role marker whole, and no merges spent on SuperLink's added tokens."""
    from router.config import load_config
    from shapesworld.source import ANSWER_WORDS

    cfg = load_config("shapes")
    tok = data_tokenizer(cfg)
    split = {w: tok.tokenize(" " + w) for w in ANSWER_WORDS if len(tok.tokenize(" " + w)) > 1}
    assert not split, f"answer words in pieces: {split}"
    assert cfg.model.text.lowercase_instructions
    assert tok.tokenize("how many objects are red?")[0] == "how"  # line-initial, lower case: as prompted
    assert tok.tokenize(" ASSISTANT:") == ["\u0120ASSISTANT", ":"]
    from router.sources import as_prompted

    assert as_prompted("<image>\nHow many Stars?\none", lowercase=True) == "USER:\nhow many stars? ASSISTANT: one"
    bpe = tok.backend_tokenizer.get_vocab(with_added_tokens=False)
    assert not [t for t in bpe if "loc_" in t or "cls_" in t or "><" in t]


def test_loading_a_saved_system_builds_no_tokenizer(tiny_config, tmp_path, monkeypatch):
    import router.sources
    from router.system import build_system, load_system, save_system

    system, processor = build_system(tiny_config, decoders=["keypoints"])
    save_system(tiny_config, system, processor, tmp_path / "saved")

    def no_build(*_args, **_kwargs):
        raise AssertionError("loading a saved system trained a tokenizer")

    monkeypatch.setattr(router.sources, "_tokenizer", no_build)
    _, loaded, loaded_processor = load_system(tmp_path / "saved", decoders=["keypoints"])
    text = "<image>\nDetect circle. Sure, circle [DET]."
    assert loaded_processor.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
