"""Image loading (mllm.images) and the processor: template, <image> expansion, placeholders, labels, padding, regions."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mllm.images import ImageError, load_image
from mllm.processor import IGNORE_INDEX, ProcessorError, SuperLinkProcessor
from mllm.tokenizer import build_tokenizer, resegment
from mllm.vocab import Vocabulary

LIMIT = 16_777_216
CORPUS = [
    "USER: detect the red circle and the blue star in the image ASSISTANT: Sure, here are the results.",
    "USER: what colour is the square? ASSISTANT: It is green.",
] * 4


# ---- images -----------------------------------------------------------------------------------
def _png(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (pixel data absent): opening it must not decode anything."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white background
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half transparent black over white
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (40, 255), (40, 40, 40)),
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 257 * 100, (100, 100, 100)),  # 16-bit scaled to 8 bit
        ("I;16", 65535, (255, 255, 255)),
        ("I", 257 * 3, (3, 3, 3)),
        ("F", 0.5, (128, 128, 128)),  # float in [0, 1]
        ("F", 200.0, (200, 200, 200)),  # float holding 8-bit levels (float TIFFs)
        ("F", 257.0 * 100, (100, 100, 100)),  # float holding 16-bit levels
    ],
)
def test_pil_modes_become_rgb(mode: str, value, expected) -> None:
    out = load_image(Image.new(mode, (5, 3), value), LIMIT)
    assert out.mode == "RGB" and out.size == (5, 3)
    assert out.getpixel((2, 1)) == expected


def test_float_images_out_of_every_range_are_refused() -> None:
    with pytest.raises(ImageError, match=r"0\.\.1, 0\.\.255 or 0\.\.65535"):
        load_image(Image.new("F", (4, 4), 1e6), LIMIT)
    with pytest.raises(ImageError, match="must lie in"):
        load_image(Image.new("F", (4, 4), -3.0), LIMIT)


def test_palette_with_and_without_transparency() -> None:
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert load_image(p, LIMIT).getpixel((0, 0)) == (10, 200, 30)
    p.info["transparency"] = 1  # palette entry 1 transparent -> white
    assert load_image(p, LIMIT).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_png_bytes_are_scaled() -> None:
    im = Image.fromarray(np.full((3, 4), 257 * 200, dtype=np.uint16))
    out = load_image(_png(im), LIMIT)
    assert out.mode == "RGB" and out.size == (4, 3) and out.getpixel((0, 0)) == (200, 200, 200)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((3, 5), 9, np.uint8), (9, 9, 9)),
        (np.full((3, 5, 1), 9, np.uint8), (9, 9, 9)),
        (np.tile(np.array([1, 2, 3], np.uint8), (3, 5, 1)), (1, 2, 3)),
        (np.tile(np.array([1, 2, 3, 0], np.uint8), (3, 5, 1)), (255, 255, 255)),
        (np.full((3, 5, 3), 65535, np.uint16), (255, 255, 255)),
        (np.full((3, 5, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((3, 5), 1.0, np.float64), (255, 255, 255)),
    ],
)
def test_numpy_inputs(array: np.ndarray, expected) -> None:
    out = load_image(array, LIMIT)
    assert out.mode == "RGB" and out.size == (5, 3) and out.getpixel((4, 2)) == expected


def test_tensor_layouts_agree() -> None:
    hwc = torch.rand(6, 7, 3)
    a = np.asarray(load_image(hwc, LIMIT))
    b = np.asarray(load_image(hwc.permute(2, 0, 1), LIMIT))  # (C, H, W)
    c = np.asarray(load_image((hwc * 255).round().to(torch.uint8), LIMIT))
    assert a.shape == (6, 7, 3) and np.array_equal(a, b) and np.abs(a.astype(int) - c).max() <= 1
    assert load_image(torch.full((2, 2), 0.5, dtype=torch.bfloat16), LIMIT).getpixel((0, 0)) == (
        128,
        128,
        128,
    )


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((3, 5), 2.0, np.float32), r"values 2\.\.2; float images must lie in \[0, 1\]"),
        (np.full((3, 5), np.nan, np.float32), "NaN"),
        (np.zeros((3, 5), np.int32), "unsupported dtype int32"),
        (np.zeros((3, 5, 2), np.uint8), r"shape \(3, 5, 2\)"),
        (np.zeros((2, 3, 5, 3), np.uint8), r"shape \(2, 3, 5, 3\)"),
        (np.zeros((0, 5, 3), np.uint8), r"zero size \(5x0\)"),
        (torch.zeros(3, 4, 5, dtype=torch.bool), "unsupported dtype bool"),
        ("cat.png", "unsupported image type str; accepted: PIL"),
        (b"", "empty"),
        (b"definitely not an image", "not a recognised image format"),
    ],
)
def test_bad_images_are_refused(bad, match: str) -> None:
    with pytest.raises(ImageError, match=match):
        load_image(bad, LIMIT)


def test_truncated_bytes_are_refused() -> None:
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2], LIMIT)


def test_oversized_images_are_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match=r"^image is 10x10 = 100 pixels; the limit is 99"):
        load_image(Image.new("RGB", (10, 10)), max_pixels=99)
    with pytest.raises(ImageError, match=r"image is 10x10 = 100 pixels"):
        load_image(np.zeros((10, 10, 3), np.uint8), max_pixels=99)
    with pytest.raises(ImageError, match=r"^image is 5000x5000 = 25000000 pixels; the limit is 16777216"):
        load_image(_png_header(5000, 5000), LIMIT)
    with pytest.raises(ImageError, match=r"^image is 400000000 pixels; the limit is 16777216"):
        load_image(_png_header(20000, 20000), LIMIT)  # beyond PIL's own decompression-bomb guard


def test_jpeg_bytes_round_trip() -> None:
    out = load_image(_png(Image.new("RGB", (9, 4), (200, 10, 10)), "JPEG"), LIMIT)
    assert out.size == (9, 4) and np.abs(np.asarray(out, int) - [200, 10, 10]).max() <= 8


# ---- processor --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def proc(tiny_config) -> SuperLinkProcessor:
    cfg = tiny_config.model
    return SuperLinkProcessor(
        build_tokenizer(CORPUS, Vocabulary.from_config(cfg), cfg.text.tokenizer_vocab_size), cfg
    )


def test_build_prompt_template(proc: SuperLinkProcessor) -> None:
    assert proc.build_prompt("What is this?") == "USER: What is this? ASSISTANT:"
    assert (
        proc.build_prompt("What is this?", num_images=2) == "USER: <image>\n<image>\nWhat is this? ASSISTANT:"
    )
    assert proc.build_prompt("Compare <image> and <image>.", "Same.", num_images=2) == (
        "USER: Compare <image> and <image>. ASSISTANT: Same.</s>"
    )
    with pytest.raises(ProcessorError, match=r"has 2 <image> placeholder\(s\) but 1 image"):
        proc.build_prompt("<image><image> hi", num_images=1)
    with pytest.raises(ProcessorError, match=r"has 1 <image> placeholder\(s\) but 0 image"):
        proc.build_prompt("<image> hi")


def test_image_tokens_expand_to_num_patches(proc: SuperLinkProcessor) -> None:
    n = proc.config.vision.num_patches
    assert n == 16
    ids = proc.encode_row("Compare <image> with <image> now", num_images=2).input_ids
    pos = [i for i, t in enumerate(ids) if t == proc.image_token_id]
    assert len(pos) == 2 * n
    assert pos[:n] == list(range(pos[0], pos[0] + n))  # each image's tokens are contiguous
    assert pos[n:] == list(range(pos[n], pos[n] + n)) and pos[n] > pos[n - 1] + 1  # text between the two
    assert ids[0] == proc.bos_token_id
    assert proc.tokenizer.decode(ids[pos[-1] + 1 :]) == " now ASSISTANT:"


def test_answer_placeholders_and_label_masking(proc: SuperLinkProcessor) -> None:
    answer = "red circle [DET], draw [GEN] <cls_0><loc_1><loc_2><loc_3><loc_4>."
    row = proc.encode_row("detect the red circle", num_images=1, answer=answer)
    ids, labels = row.input_ids, row.labels
    prompt = proc.encode_row("detect the red circle", num_images=1).input_ids
    assert ids[: row.prompt_length] == prompt and labels[: row.prompt_length] == [IGNORE_INDEX] * len(prompt)
    det, gen = proc.route_token_ids["DET"], proc.route_token_ids["GEN"]
    i, j = ids.index(det), ids.index(gen)
    assert (
        ids[i + 1 : i + 5] == [proc.placeholder_token_ids["DET"]] * 4
        and ids[i + 5] != proc.placeholder_token_ids["DET"]
    )
    assert ids[j + 1 : j + 9] == [proc.placeholder_token_ids["GEN"]] * 8
    placeholders = set(range(i + 1, i + 5)) | set(range(j + 1, j + 9))
    for k in range(row.prompt_length, len(ids)):  # answer: every token keeps its id except placeholders
        assert labels[k] == (IGNORE_INDEX if k in placeholders else ids[k]), k
    assert ids[-1] == labels[-1] == proc.eos_token_id
    kept = [ids[k] for k in range(row.prompt_length, len(ids)) if labels[k] != IGNORE_INDEX]
    assert proc.tokenizer.decode(kept) == f" {answer}</s>"
    assert proc.decode(ids[row.prompt_length :]) == answer


@pytest.mark.parametrize(
    ("instruction", "answer", "match"),
    [
        ("hi", "red [DET_Q]", r"answer contains \[DET_Q\]"),
        ("hi", "look <image>", "answer contains <image>"),
        ("find [DET] here", None, r"instruction contains \[DET\]"),
    ],
)
def test_reserved_tokens_are_refused(proc: SuperLinkProcessor, instruction: str, answer, match: str) -> None:
    with pytest.raises(ProcessorError, match=match):
        proc.encode_row(instruction, 0, answer)


def test_batch_left_padding_labels_and_pixels(proc: SuperLinkProcessor) -> None:
    white = Image.new("RGB", (40, 20), (255, 255, 255))
    black = np.zeros((8, 8, 3), np.uint8)
    instr = ["what colour is the square?", "detect the red circle", "hello"]
    answers = ["It is green.", "red circle [DET].", "hi"]
    out = proc(instr, [[white], [black, white], []], answers=answers)
    rows = [proc.encode_row(t, n, a) for t, n, a in zip(instr, [1, 2, 0], answers, strict=True)]
    t = max(len(r.input_ids) for r in rows)
    assert out["input_ids"].shape == out["attention_mask"].shape == out["labels"].shape == (3, t)
    assert out["input_ids"].dtype == out["attention_mask"].dtype == out["labels"].dtype == torch.long
    for b, r in enumerate(rows):
        pad = t - len(r.input_ids)
        assert out["input_ids"][b, pad:].tolist() == r.input_ids
        assert out["input_ids"][b, :pad].eq(proc.pad_token_id).all()
        assert out["attention_mask"][b].tolist() == [0] * pad + [1] * len(r.input_ids)
        assert out["labels"][b].tolist() == [IGNORE_INDEX] * pad + r.labels
    assert out["pixel_values"].shape == (3, 3, 32, 32) and out["pixel_values"].dtype == torch.float32
    mean, std = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(out["pixel_values"][0, :, 5, 5], (1 - mean) / std)  # row 0's white image
    torch.testing.assert_close(out["pixel_values"][1, :, 5, 5], (0 - mean) / std)  # row 1's black image
    torch.testing.assert_close(out["pixel_values"][2], out["pixel_values"][0])
    assert out["image_sizes"] == [(40, 20), (8, 8), (40, 20)] and out["images_per_row"] == [1, 2, 0]
    assert out["region_masks"] is None and out["region_image_index"] is None


def test_generation_batch_has_no_labels(proc: SuperLinkProcessor) -> None:
    out = proc(["hi", "what colour is the square?"])
    assert "labels" not in out and out["pixel_values"] is None
    assert (
        out["input_ids"][:, -1].tolist() == [proc.tokenizer.convert_tokens_to_ids(":")] * 2
    )  # "ASSISTANT:" last


def test_region_masks_box_point_mask(proc: SuperLinkProcessor) -> None:
    big, small = Image.new("RGB", (64, 32)), Image.new("RGB", (16, 16))
    mask = np.zeros((16, 16), bool)
    mask[4:8, 8:16] = True
    regions = [[{"box": [0, 0, 32, 16]}], [{"point": [8, 8], "image": 1}, {"mask": mask, "image": 1}]]
    out = proc(["what is <region>?", "compare <region> and <region>"], [[big], [big, small]], regions=regions)
    masks, index = out["region_masks"], out["region_image_index"]
    assert masks.shape == (3, 32, 32) and masks.dtype == torch.float32 and index.tolist() == [0, 2, 2]
    expected_box = torch.zeros(32, 32)
    expected_box[:16, :16] = 1  # left half of the width, top half of the height
    assert torch.equal(masks[0], expected_box)
    ys, xs = torch.nonzero(masks[1], as_tuple=True)  # disc of radius 2 around (16, 16) at 32 px
    assert masks[1, 16, 16] == 1 and 9 <= int(masks[1].sum()) <= 16
    assert ((xs.float() + 0.5 - 16) ** 2 + (ys.float() + 0.5 - 16) ** 2).max() <= 4
    expected_mask = torch.zeros(32, 32)
    expected_mask[8:16, 16:32] = 1
    assert torch.equal(masks[2], expected_mask)
    assert (out["input_ids"] == proc.region_token_id).sum() == 3  # one token per region, not expanded


def test_region_mask_from_rle_and_tiny_box(proc: SuperLinkProcessor) -> None:
    from pycocotools import mask as mask_utils

    m = np.zeros((16, 16), np.uint8, order="F")
    m[0:8, 0:8] = 1
    rle = mask_utils.encode(m)
    rle = {"size": rle["size"], "counts": rle["counts"].decode()}
    out = proc.region_mask({"mask": rle}, (16, 16))
    assert out[:16, :16].all() and out.sum() == 256
    thin = proc.region_mask({"box": [10.0, 10.0, 10.1, 10.1]}, (64, 64))  # thinner than one vision pixel
    assert thin.sum() == 1 and thin[5, 5] == 1


@pytest.mark.parametrize(
    ("instruction", "regions", "match"),
    [
        ("what is <region>?", [], r"1 <region> placeholder\(s\) but 0 region"),
        ("what is this?", [{"box": [0, 0, 4, 4]}], r"0 <region> placeholder\(s\) but 1 region"),
        ("<region>", [{"box": [0, 0, 40, 4]}], "outside the 16x16 image"),
        ("<region>", [{"box": [8, 0, 4, 4]}], "x2 < x1"),
        ("<region>", [{"box": [0, 0, 4, 4], "point": [1, 1]}], "exactly one of box, point, mask or scribble"),
        ("<region>", [{"polygon": [0, 0, 4, 4]}], "exactly one of box, point, mask or scribble"),
        ("<region>", [{"mask": np.zeros((16, 16), bool)}], "mask is empty"),
        (
            "<region>",
            [{"mask": np.ones((8, 16), bool)}],
            r"must match the original image \(H, W\) = \(16, 16\)",
        ),
        ("<region>", [{"point": [1, 1], "image": 1}], "refers to image 1 but the row has 1 image"),
    ],
)
def test_bad_regions_are_refused(proc: SuperLinkProcessor, instruction: str, regions, match: str) -> None:
    with pytest.raises(ProcessorError, match=match):
        proc([instruction], [[Image.new("RGB", (16, 16))]], regions=[regions])


def test_prompt_limit_and_row_counts(proc: SuperLinkProcessor, tiny_config) -> None:
    short = SuperLinkProcessor(proc.tokenizer, tiny_config.model.model_copy(update={"max_prompt_tokens": 20}))
    with pytest.raises(
        ProcessorError,
        match=r"prompt is \d+ tokens \(1 image\(s\) x 16 image tokens included\); the limit is 20",
    ):
        short(["describe it"], [[Image.new("RGB", (4, 4))]])
    with pytest.raises(ProcessorError, match="answers has 1 rows but there are 2 instructions"):
        proc(["a", "b"], answers=["x"])


def test_save_and_load_round_trip(proc: SuperLinkProcessor, tmp_path, tiny_config) -> None:
    proc.save_pretrained(tmp_path)
    loaded = SuperLinkProcessor.from_pretrained(tmp_path, tiny_config.model)
    a = proc(["detect the red circle"], answers=["red circle [DET] <loc_3>"])
    b = loaded(["detect the red circle"], answers=["red circle [DET] <loc_3>"])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert loaded.route_token_ids == proc.route_token_ids and loaded.image_token_id == proc.image_token_id
    with pytest.raises(ProcessorError, match="no such directory"):
        SuperLinkProcessor.from_pretrained(tmp_path / "missing", tiny_config.model)


def test_tokenizer_without_superlink_tokens_is_refused(proc: SuperLinkProcessor, tiny_config) -> None:
    bigger = tiny_config.model.model_copy(update={"routes": {**tiny_config.model.routes, "DEPTH": 4}})
    with pytest.raises(ProcessorError, match=r"tokenizer lacks SuperLink tokens: \[DEPTH\], \[DEPTH_Q\]"):
        SuperLinkProcessor(proc.tokenizer, bigger)


def test_localization_reads_the_polygon_count_and_builds_its_constraint(proc: SuperLinkProcessor) -> None:
    from mllm.localize import LocalizeRequest

    spec = proc.localization("<image>\noutline the red circle using 20 vertices")
    assert spec == LocalizeRequest("polygon", 20)
    c = proc.decoding_constraint(spec, num_classes=1)
    assert c is not None and c.points == 20 and c.bound == 1
    assert list(c.loc_ids) == proc.tokenizer.convert_tokens_to_ids([f"<loc_{i}>" for i in range(len(c.loc_ids))])
    assert proc.decoding_constraint(proc.localization("detect the stars"), 1) is None
    with pytest.raises(ProcessorError, match="supported point counts are 3..64"):
        proc.localization("Segment each star with a 100-point polygon")


def test_scribble_regions_are_encoded_like_masks(proc: SuperLinkProcessor) -> None:
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    batch = proc(["<region> what is here?"], images=[[img]],
                 regions=[[{"scribble": [[[8, 40], [56, 40]]], "width": 8}]])
    mask = batch["region_masks"][0]  # (S, S) at the vision resolution (32 for tiny)
    s = mask.shape[0]
    rows = mask[:, s // 2].nonzero().flatten().tolist()  # an 8 px pen at y = 40 of 64 px: ~4 of 32 rows at y ~ 20
    assert 4 <= len(rows) <= 5 and set(rows) <= set(range(17, 24))
    assert mask[:2].sum() == 0 and mask[-2:].sum() == 0
    with pytest.raises(ProcessorError, match="region scribble polyline 0 has point .* outside the 64x64 image"):
        proc(["<region>"], images=[[img]], regions=[[{"scribble": [[[8, 40], [99, 40]]]}]])
    with pytest.raises(ProcessorError, match="'width' for a scribble"):
        proc(["<region>"], images=[[img]], regions=[[{"box": [1, 1, 4, 4], "width": 3}]])


def test_uncased_processor_reads_every_casing_alike(tiny_config) -> None:
    tok = build_tokenizer(CORPUS, Vocabulary.from_config(tiny_config.model), vocab_size=300)
    cased = SuperLinkProcessor(tok, tiny_config.model)
    text = tiny_config.model.text.model_copy(update={"lowercase_instructions": True})
    uncased = SuperLinkProcessor(tok, tiny_config.model.model_copy(update={"text": text}))
    wordings = ["Describe the image.", "describe the image.", "DESCRIBE THE IMAGE.", "Describe The Image."]
    assert len({tuple(uncased.encode_row(w, 1).input_ids) for w in wordings}) == 1
    assert len({tuple(cased.encode_row(w, 1).input_ids) for w in wordings}) == 4
    row = uncased.encode_row("Detect Red Circle", 1, "Sure, red circle [DET].")
    ref = cased.encode_row("detect red circle", 1, "Sure, red circle [DET].")
    assert row.input_ids == ref.input_ids and row.labels == ref.labels  # the answer keeps its "Sure"
    with pytest.raises(ProcessorError, match="DET"):
        uncased.encode_row("find [DET]", 1)


@pytest.mark.parametrize("counts", ["02", "0:", "9340004", "9340004N2"])
def test_rle_counts_must_cover_the_mask_exactly(proc: SuperLinkProcessor, counts: str) -> None:
    """Runs covering fewer or more pixels than h*w would leave uninitialised memory in the mask (or overrun it)."""
    with pytest.raises(ProcessorError, match="RLE"):
        proc.region_mask({"mask": {"size": [7, 5], "counts": counts}}, (5, 7))
    ok = proc.region_mask({"mask": {"size": [7, 5], "counts": "9340004N"}}, (5, 7))  # 35 pixels exactly
    assert ok.shape == (proc.image_size,) * 2 and ok.sum() > 0


# ---- subword regularisation (training.subword_dropout) ------------------------------------------
def test_resegment_keeps_the_text_and_added_tokens(proc: SuperLinkProcessor) -> None:
    tok = proc.tokenizer
    ids = tok("USER: <image>\ndetect the red circle ASSISTANT:", add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    outs = [resegment(tok, ids, 0.3, rng) for _ in range(20)]
    assert all(tok.decode(o) == tok.decode(ids) for o in outs)
    assert all(o.count(proc.image_token_id) == 1 for o in outs)  # added tokens are never split
    assert len({tuple(o) for o in outs}) > 5 and all(len(o) >= len(ids) for o in outs)
    assert max(len(o) for o in outs) > len(ids)
    assert resegment(tok, ids, 0.0, rng) == ids
    again = [resegment(tok, ids, 0.3, np.random.default_rng(0)) for _ in range(2)]
    assert again[0] == again[1] == outs[0]  # deterministic for a given generator state
    with pytest.raises(ValueError, match=r"must be in \[0, 1\); got 1.0"):
        resegment(tok, ids, 1.0, rng)


def test_subword_dropout_processor_changes_prompts_only(proc: SuperLinkProcessor) -> None:
    answer = "Sure, red circle [DET]."
    plain = proc.encode_row("detect the red circle please", 1, answer)
    noisy = proc.with_subword_dropout(0.5, seed=3)
    assert proc.subword_dropout == 0.0  # the original is untouched
    rows = [noisy.encode_row("detect the red circle please", 1, answer) for _ in range(8)]
    prompt_len = plain.prompt_length
    assert any(r.prompt_length > prompt_len for r in rows)
    for r in rows:  # the same text; answer ids and labels exactly as without dropout
        assert proc.tokenizer.decode(r.input_ids[: r.prompt_length]) == proc.tokenizer.decode(
            plain.input_ids[:prompt_len]
        )
        assert r.input_ids[r.prompt_length :] == plain.input_ids[prompt_len:]
        assert r.labels[r.prompt_length :] == plain.labels[prompt_len:]
    noisy.reseed(7)
    first = noisy.encode_row("detect the red circle please", 1).input_ids
    noisy.reseed(7)
    assert noisy.encode_row("detect the red circle please", 1).input_ids == first
    assert proc.encode_row("detect the red circle please", 1).input_ids == plain.input_ids[:prompt_len]
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        proc.with_subword_dropout(-0.1)
