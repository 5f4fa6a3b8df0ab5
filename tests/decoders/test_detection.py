"""LinkGroundingDino + DetectionDecoder: losses fall, gradients reach the link states, coordinates, checkpoints, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GroundingDinoForObjectDetection

from decoders.base import DecoderInputError, DecoderOutput
from decoders.detection import (
    Detection,
    DetectionBatch,
    DetectionDecoder,
    DetectionTarget,
    LinkDinoOutput,
    grounding_dino_config,
)
from decoders.images import IMAGENET_MEAN, IMAGENET_STD, prepare_images


@pytest.fixture(scope="module")
def cfg(tiny_config):
    return tiny_config.decoders.detector


@pytest.fixture
def decoder(cfg) -> DetectionDecoder:
    """A fresh decoder, for tests that train or change it."""
    torch.manual_seed(0)
    return DetectionDecoder(cfg)


@pytest.fixture(scope="module")
def frozen(cfg) -> DetectionDecoder:
    """One decoder in eval mode shared by the read-only tests."""
    torch.manual_seed(0)
    return DetectionDecoder(cfg).eval()


SIZES = [(128, 128), (200, 100)]  # original (w, h): one square, one wide


def make_batch(dec: DetectionDecoder, task="det", requires_grad=False, **options) -> DetectionBatch:
    g = torch.Generator().manual_seed(1)
    states = torch.randn(2, 3, 4, dec.link_dim, generator=g).requires_grad_(requires_grad)  # (B, P, Q, C)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    pixels = torch.randn(2, 3, 128, 128, generator=g)
    return DetectionBatch(
        pixels, list(SIZES), states, mask, [["red", "blue", "green"], ["a", "b"]], task, **options
    )


def box_mask(h: int, w: int, box) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = True
    return m


def make_targets(with_masks: bool) -> list[DetectionTarget]:
    boxes0, boxes1 = [[20, 10, 60, 50], [60, 70, 100, 120]], [[50, 20, 150, 80]]
    m0 = torch.stack([box_mask(128, 128, b) for b in boxes0]) if with_masks else None
    m1 = torch.stack([box_mask(100, 200, b) for b in boxes1]) if with_masks else None
    return [
        DetectionTarget(torch.tensor(boxes0, dtype=torch.float32), torch.tensor([0, 2]), m0),
        DetectionTarget(torch.tensor(boxes1, dtype=torch.float32), torch.tensor([1]), m1),
    ]


def overfit(dec, batch, targets, steps: int) -> tuple[list[float], DecoderOutput, DecoderOutput]:
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    losses, first, last = [], None, None
    for _ in range(steps):
        opt.zero_grad()
        last = dec(batch, targets)
        first = first or last
        last.loss.backward()
        opt.step()
        losses.append(last.loss.item())
    return losses, first, last


# ----------------------------------------------------------------------------- images


def test_prepare_images_mixed_sizes_and_normalisation():
    red = np.zeros((60, 100, 3), np.uint8)
    red[..., 0] = 255
    gray = Image.new("L", (50, 80), color=128)
    floats = np.full((30, 40, 3), 0.5, np.float32)
    pixels, sizes = prepare_images([red, gray, floats], size=64, max_pixels=10_000)
    assert pixels.shape == (3, 3, 64, 64)
    assert sizes == [(100, 60), (50, 80), (40, 30)]
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(pixels[0, :, 10, 10], (torch.tensor([1.0, 0.0, 0.0]) - mean) / std)
    torch.testing.assert_close(
        pixels[1, :, 5, 5], (torch.full((3,), 128 / 255) - mean) / std, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(pixels[2, :, 0, 0], (torch.full((3,), 0.5) - mean) / std)


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "empty image list"),
        ([np.zeros((200, 200, 3), np.uint8)], "exceeds the limit"),
        ([np.zeros((20, 20, 3), np.int64)], "dtype"),
        ([np.full((20, 20, 3), 2.0, np.float32)], "within \\[0, 1\\]"),
        ([np.zeros((20, 20, 5), np.uint8)], "expected shape"),
        (["not an image"], "PIL image or a numpy array"),
    ],
)
def test_prepare_images_rejects_bad_input(images, message):
    with pytest.raises(DecoderInputError, match=message):
        prepare_images(images, size=32, max_pixels=10_000)


# ----------------------------------------------------------------------------- training


def test_detection_loss_falls(decoder):
    losses, first, last = overfit(decoder, make_batch(decoder, "det"), make_targets(False), steps=20)
    assert losses[-1] <= 0.5 * losses[0], losses
    assert set(last.losses) == {"loss_class", "loss_bbox", "loss_giou"}
    assert last.losses["loss_bbox"] < first.losses["loss_bbox"]


def test_segmentation_mask_loss_falls(decoder):
    batch, targets = make_batch(decoder, "seg"), make_targets(True)
    losses, first, last = overfit(decoder, batch, targets, steps=30)
    assert losses[-1] <= 0.5 * losses[0], losses
    mask_first = first.losses["loss_mask"] + first.losses["loss_dice"]
    mask_last = last.losses["loss_mask"] + last.losses["loss_dice"]
    assert mask_last < 0.8 * mask_first, (mask_first, mask_last)


def test_gradients_reach_link_states(decoder):
    batch = make_batch(decoder, "seg", requires_grad=True)
    decoder(batch, make_targets(True)).loss.backward()
    grad = batch.phrase_states.grad
    assert grad is not None and grad.abs().sum() > 0
    # The padded phrase takes no part (the fusion layer masks with a large finite negative, so ~1e-12 leaks).
    assert grad[1, 2].abs().max() < 1e-6 * grad.abs().max()
    assert torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- predictions


def test_mixed_image_sizes_come_back_in_original_coordinates(frozen, cfg):
    images = [
        np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8),
        Image.new("RGB", (70, 130)),
    ]
    states = torch.randn(2, 2, 4, frozen.link_dim)
    mask = torch.tensor([[True, True], [True, False]])
    for task in ("det", "seg", "grd"):
        batch = DetectionBatch.from_images(
            images, states, mask, [["x", "y"], ["z"]], cfg, task=task, score_threshold=0.0
        )
        assert batch.image_sizes == [(160, 90), (70, 130)]
        preds = frozen(batch).predictions
        assert len(preds) == 2
        for dets, (w, h) in zip(preds, batch.image_sizes, strict=True):
            assert dets and all(isinstance(d, Detection) for d in dets)
            for d in dets:
                x1, y1, x2, y2 = d.box
                assert 0 <= x1 <= x2 <= w + 1e-4 and 0 <= y1 <= y2 <= h + 1e-4
                assert 0.0 <= d.score <= 1.0
                if task == "seg":
                    assert d.mask is not None and d.mask.shape == (h, w) and d.mask.dtype == bool
                else:
                    assert d.mask is None
        if task == "grd":  # exactly one box per phrase
            assert [d.phrase for d in preds[0]] == ["x", "y"] and [d.phrase for d in preds[1]] == ["z"]


def test_predict_maps_normalised_boxes_to_each_image(frozen):
    batch = make_batch(frozen, ["det", "grd"], score_threshold=0.5, top_k=5)
    n, p = frozen.config.num_queries, 3
    logits = torch.full((1, 2, n, p), -10.0)
    logits[0, :, 4, 1] = 10.0  # query 4 is phrase 1 in both images
    boxes = torch.full((1, 2, n, 4), 0.5)  # centre (0.5, 0.5), size (0.5, 0.5)
    out = LinkDinoOutput(logits=logits, boxes=boxes, hidden=torch.zeros(2, n, 32), text=torch.zeros(2, p, 32))
    det, grd = frozen.predict(out, batch)
    assert [(d.phrase_index, d.phrase) for d in det] == [(1, "blue")]
    assert det[0].box == pytest.approx((32.0, 32.0, 96.0, 96.0))
    assert [d.phrase for d in grd] == ["a", "b"]  # [GRD]: one per phrase, no threshold
    assert grd[1].box == pytest.approx((50.0, 25.0, 150.0, 75.0))  # 200 x 100 image
    assert grd[1].score > 0.99 and grd[0].score < 0.01


def test_score_threshold_and_top_k(frozen):
    assert frozen(make_batch(frozen, score_threshold=1.0)).predictions == [[], []]
    preds = frozen(make_batch(frozen, score_threshold=0.0, top_k=2)).predictions
    assert [len(p) for p in preds] == [2, 2]
    assert preds[0][0].score >= preds[0][1].score


# ----------------------------------------------------------------------------- checkpoints


def test_loads_a_standard_transformers_folder(cfg, tmp_path):
    torch.manual_seed(3)
    cfg = cfg.model_copy(update={"num_points": 3, "backbone_depths": [1, 1, 2, 1]})  # not the defaults
    standard = GroundingDinoForObjectDetection(grounding_dino_config(cfg))
    standard.save_pretrained(tmp_path)
    dec = DetectionDecoder.from_pretrained(tmp_path)
    ours, theirs = dec.model.state_dict(), standard.state_dict()
    assert not any(k.startswith("model.text_") for k in ours)  # BERT and its projection dropped
    shared = [k for k in ours if k in theirs]
    assert len(shared) > 200
    assert all(torch.equal(ours[k], theirs[k]) for k in shared)
    assert {k for k in ours if k not in theirs} == {k for k in ours if k.startswith("mask_")}
    assert dec.link_dim == cfg.d_model and dec.config.num_queries == cfg.num_queries
    assert dec.config.num_points == 3 and dec.config.backbone_depths == [1, 1, 2, 1]


def test_save_and_load_whole_decoder(decoder, tmp_path):
    decoder.eval()
    decoder.save_pretrained(tmp_path)
    loaded = DetectionDecoder.from_pretrained(tmp_path).eval()
    assert loaded.config == decoder.config
    a, b = decoder.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    batch = make_batch(decoder, "seg", score_threshold=0.0, top_k=3)
    pa, pb = decoder(batch).predictions, loaded(batch).predictions
    assert [d.box for d in pa[0]] == [d.box for d in pb[0]]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DetectionDecoder.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- bad input


def _replace(batch: DetectionBatch, **changes) -> DetectionBatch:
    return dataclasses.replace(batch, **changes)


BAD_BATCHES = {
    "no query axis": (lambda b: _replace(b, phrase_states=b.phrase_states[:, :, 0]), "expected \\(B=2, P, Q"),
    "wrong width": (lambda b: _replace(b, phrase_states=b.phrase_states[..., :16]), "expected shape"),
    "nan": (
        lambda b: _replace(
            b, phrase_states=b.phrase_states.clone().index_fill_(0, torch.tensor([1]), float("nan"))
        ),
        "NaN or inf",
    ),
    "inf": (lambda b: _replace(b, phrase_states=b.phrase_states.clone().fill_(float("inf"))), "NaN or inf"),
    "empty phrases": (lambda b: _replace(b, phrases=[["red", "blue", "green"], []]), "empty phrase list"),
    "mask disagrees": (lambda b: _replace(b, phrases=[["red"], ["a", "b"]]), "phrase_mask\\[0\\]"),
    "mask dtype": (lambda b: _replace(b, phrase_mask=b.phrase_mask.long()), "bool tensor"),
    "wrong image side": (lambda b: _replace(b, pixel_values=torch.zeros(2, 3, 96, 96)), "prepare_images"),
    "over max pixels": (
        lambda b: _replace(b, image_sizes=[(128, 128), (5000, 5000)]),
        "outside the accepted range",
    ),
    "sizes count": (lambda b: _replace(b, image_sizes=[(128, 128)]), "image_sizes"),
    "bad task": (lambda b: _replace(b, task="pose"), "task"),
    "too many phrases": (
        lambda b: _replace(
            b, phrase_states=torch.zeros(2, 17, 4, 32), phrase_mask=torch.ones(2, 17, dtype=torch.bool)
        ),
        "accepted 1 .. 16",
    ),
}


@pytest.mark.parametrize("name", list(BAD_BATCHES))
def test_bad_batches_raise(frozen, name):
    change, message = BAD_BATCHES[name]
    with pytest.raises(DecoderInputError, match=message):
        frozen(change(make_batch(frozen)))


def test_images_over_max_pixels_raise(frozen, cfg):
    small = cfg.model_copy(update={"max_image_pixels": 100 * 100})
    with pytest.raises(DecoderInputError, match="exceeds the limit of 10000 pixels"):
        DetectionBatch.from_images(
            [np.zeros((101, 100, 3), np.uint8)],
            torch.zeros(1, 1, 4, 32),
            torch.ones(1, 1, dtype=torch.bool),
            [["x"]],
            small,
        )


@pytest.mark.parametrize(
    "target, message",
    [
        (DetectionTarget(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([3])), "must lie in \\[0, 3\\)"),
        (DetectionTarget(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([-1])), "must lie in"),
        (DetectionTarget(torch.tensor([[10.0, 0, 5, 10]]), torch.tensor([0])), "x2 >= x1"),
        (DetectionTarget(torch.tensor([0.0, 0, 10, 10]), torch.tensor([0])), "boxes \\(n, 4\\)"),
        (
            DetectionTarget(
                torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0]), torch.zeros(1, 64, 64, dtype=torch.bool)
            ),
            "original size",
        ),
    ],
)
def test_bad_targets_raise(frozen, target, message):
    targets = [target, make_targets(False)[1]]
    with pytest.raises(DecoderInputError, match=message):
        frozen(make_batch(frozen), targets)


def test_wrong_number_of_targets_raises(frozen):
    with pytest.raises(DecoderInputError, match="one per image"):
        frozen(make_batch(frozen), make_targets(False)[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_and_predicts_on_cuda_with_cpu_targets(cfg):
    torch.manual_seed(0)
    dec = DetectionDecoder(cfg).cuda()
    batch = make_batch(dec, "seg", score_threshold=0.0, top_k=3)
    batch.pixel_values, batch.phrase_states = batch.pixel_values.cuda(), batch.phrase_states.cuda()
    batch.phrase_mask = batch.phrase_mask.cuda()
    losses, _, last = overfit(dec, batch, make_targets(True), steps=20)  # targets stay on the CPU
    assert losses[-1] < losses[0]
    assert last.predictions[1][0].mask.shape == (100, 200)


# ----------------------------------------------------------------------------- training aids


def _enc_params(dec: DetectionDecoder) -> dict[str, torch.nn.Parameter]:
    m = dec.model.model
    # The box head's last layer (zero-initialised, as in DETR) is the one whose gradient shows at step 1.
    return {"enc_output": m.enc_output.weight, "enc_output_norm": m.enc_output_norm.weight,
            "encoder_bbox": list(m.encoder_output_bbox_embed.parameters())[-1]}


@pytest.mark.parametrize("encoder_loss", [False, True])
def test_encoder_loss_trains_the_two_stage_proposal_heads(cfg, encoder_loss):
    """Without the encoder-side loss the top-k proposal scorer gets no gradient at all; with it, it does."""
    torch.manual_seed(0)
    dec = DetectionDecoder(cfg.model_copy(update={"encoder_loss": encoder_loss})).train()
    out = dec(make_batch(dec), make_targets(with_masks=False))
    out.loss.backward()
    norms = {k: 0.0 if p.grad is None else float(p.grad.norm()) for k, p in _enc_params(dec).items()}
    if encoder_loss:
        assert all(v > 0 for v in norms.values()), norms
        assert "loss_enc" in out.losses
    else:
        assert all(v == 0 for v in norms.values()), norms
        assert "loss_enc" not in out.losses


def test_logit_calibration_starts_at_the_prior_and_keeps_padding_out(cfg):
    torch.manual_seed(0)
    dec = DetectionDecoder(cfg.model_copy(update={"logit_calibration": True})).train()
    batch = make_batch(dec, requires_grad=True)
    out = dec.run(batch, with_masks=False)
    real = out.logits[-1][0]  # image 0: three real phrases
    assert float(real.sigmoid().mean()) < 0.05  # near the 1% prior (raw dot products start near 0.5)
    assert torch.isinf(out.logits[-1][1, :, 2]).all()  # image 1's padded phrase stays -inf
    loss = dec(batch, make_targets(with_masks=False)).loss
    loss.backward()
    assert torch.isfinite(dec.logit_scale.grad) and torch.isfinite(dec.logit_bias.grad)
    assert torch.isfinite(batch.phrase_states.grad).all() and batch.phrase_states.grad.abs().sum() > 0


def test_old_detectors_have_no_calibration_parameters(cfg):
    """Both aids default off, so a checkpoint saved before they existed loads with the same keys."""
    names = {n for n, _ in DetectionDecoder(cfg).named_parameters()}
    assert not any("logit_" in n for n in names)


def test_align_weight_pulls_each_phrase_link_towards_its_own_text_embedding(cfg):
    """align_weight adds MSE(link vector, frozen text embedding of the phrase); padded phrases stay out of it."""
    torch.manual_seed(0)
    plain = DetectionDecoder(cfg).train()
    dec = DetectionDecoder(cfg.model_copy(update={"align_weight": 0.5})).train()
    dec.load_state_dict(plain.state_dict())  # no new parameters: old checkpoints load unchanged
    batch = make_batch(dec, requires_grad=True)
    out = dec(batch, make_targets(with_masks=False))
    assert "loss_align" in out.losses and "loss_align" not in plain(make_batch(plain), make_targets(False)).losses
    real = batch.phrase_states.detach().mean(2)[batch.phrase_mask]
    names = [p for ps in batch.phrases for p in ps]
    texts = dec.text_encoder.pooled(names)
    assert torch.allclose(out.losses["loss_align"], torch.nn.functional.mse_loss(real, texts))
    assert not torch.allclose(texts[0], texts[1])  # distinct phrases get distinct targets
    grad = torch.autograd.grad(dec.config.align_weight * dec.align_loss(batch), batch.phrase_states)[0]
    assert grad[~batch.phrase_mask].abs().sum() == 0 and grad[batch.phrase_mask].abs().sum() > 0
