"""KeypointDecoder ([POSE]): losses fall, OKS loss is right, gradients, shared detector, checkpoints, errors."""

from __future__ import annotations

import pytest
import torch

from decoders.base import DecoderInputError
from decoders.detection import DetectionDecoder, LinkDinoOutput
from decoders.keypoints import KeypointDecoder, PoseBatch, PoseInstance, PoseTarget

K = 6
SIZES = [(128, 128), (200, 100)]


@pytest.fixture(scope="module")
def cfgs(tiny_config):
    return tiny_config.decoders


@pytest.fixture
def decoder(cfgs) -> KeypointDecoder:
    torch.manual_seed(0)
    return KeypointDecoder.build(cfgs.keypoints, cfgs.detector)


def make_batch(dec, requires_grad=False, **options) -> PoseBatch:
    g = torch.Generator().manual_seed(1)
    states = torch.randn(2, 2, 4, dec.link_dim, generator=g).requires_grad_(requires_grad)  # (B, P, Q, C)
    mask = torch.tensor([[True, True], [True, False]])
    pixels = torch.randn(2, 3, 128, 128, generator=g)
    return PoseBatch(pixels, list(SIZES), states, mask, [["star", "square"], ["triangle"]], **options)


def points_in(box, n: int) -> torch.Tensor:
    """n labelled points spread inside box (every third occluded), the remaining slots unused."""
    x1, y1, x2, y2 = box
    pts = torch.zeros(K, 3)
    for i in range(n):
        pts[i] = torch.tensor(
            [
                x1 + (x2 - x1) * (i + 1) / (n + 1),
                y1 + (y2 - y1) * (0.1 + 0.8 * (i % 2)),
                1 if i % 3 == 0 else 2,
            ]
        )
    return pts


def make_targets() -> list[PoseTarget]:
    b0, b1 = [[20.0, 10, 60, 50], [60, 70, 100, 120]], [[50.0, 20, 150, 80]]
    return [
        PoseTarget(
            torch.tensor(b0), torch.tensor([0, 1]), keypoints=torch.stack([points_in(b, 5) for b in b0])
        ),
        PoseTarget(torch.tensor(b1), torch.tensor([0]), keypoints=torch.stack([points_in(b1[0], 3)])),
    ]


def test_pose_loss_falls(decoder):
    batch, targets = make_batch(decoder), make_targets()
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    history = []
    for _ in range(20):
        opt.zero_grad()
        out = decoder(batch, targets)
        out.loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in out.losses.items()} | {"total": out.loss.item()})
    assert history[-1]["total"] <= 0.5 * history[0]["total"], [h["total"] for h in history]
    assert history[-1]["loss_kpt_l1"] < 0.8 * history[0]["loss_kpt_l1"]
    assert history[-1]["loss_vis"] < history[0]["loss_vis"]
    assert {"loss_class", "loss_bbox", "loss_giou", "loss_kpt_l1", "loss_oks", "loss_vis"} <= set(history[-1])


def test_gradients_reach_link_states(decoder):
    batch = make_batch(decoder, requires_grad=True)
    decoder(batch, make_targets()).loss.backward()
    grad = batch.phrase_states.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert decoder.head.slot_embed.weight.grad.abs().sum() > 0


def test_perfect_keypoints_give_zero_keypoint_loss(decoder):
    """Keypoint logits built to land exactly on the targets: L1 = 0 and OKS = 1; shifting them raises both."""
    targets = make_targets()
    b, n = 2, decoder.detector.config.num_queries
    boxes = torch.full((1, b, n, 4), 0.5)
    kp = torch.zeros(b, n, K, 3)
    indices = []
    for i, (t, (w, h)) in enumerate(zip(targets, SIZES, strict=True)):
        m = t.boxes.shape[0]
        scale = torch.tensor([w, h, w, h])
        xyxy = t.boxes / scale
        boxes[0, i, :m] = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)
        rel = (
            (t.keypoints[..., :2] / scale[:2] - xyxy[:, None, :2]) / (xyxy[:, None, 2:] - xyxy[:, None, :2])
        ).clamp(1e-4, 1 - 1e-4)
        kp[i, :m, :, :2] = torch.logit(rel)
        kp[i, :m, :, 2] = torch.where(t.keypoints[..., 2] == 2, 20.0, -20.0)
        indices.append((torch.arange(m), torch.arange(m)))
    out = LinkDinoOutput(torch.zeros(1, b, n, 2), boxes, torch.zeros(b, n, 32), torch.zeros(b, 2, 32))
    exact = decoder.keypoint_losses(kp, out, targets, indices, SIZES)
    assert exact["loss_kpt_l1"] < 1e-3 and exact["loss_oks"] < 1e-3 and exact["loss_vis"] < 1e-3
    kp[..., :2] += 0.5
    shifted = decoder.keypoint_losses(kp, out, targets, indices, SIZES)
    assert shifted["loss_kpt_l1"] > 0.01 and shifted["loss_oks"] > 0.01


def test_predictions_in_original_coordinates(decoder):
    decoder.eval()
    preds = decoder(make_batch(decoder, score_threshold=0.0, top_k=4)).predictions
    assert [len(p) for p in preds] == [4, 4]
    for row, (w, h), names in zip(preds, SIZES, [["star", "square"], ["triangle"]], strict=True):
        for inst in row:
            assert isinstance(inst, PoseInstance) and inst.phrase == names[inst.phrase_index]
            x1, y1, x2, y2 = inst.box
            assert 0 <= x1 <= x2 <= w + 1e-4 and 0 <= y1 <= y2 <= h + 1e-4
            assert inst.keypoints.shape == (K, 3)
            xs, ys, vis = inst.keypoints.T
            # Keypoints are predicted relative to their own box, so they fall inside it.
            assert (xs >= x1 - 1e-3).all() and (xs <= x2 + 1e-3).all()
            assert (ys >= y1 - 1e-3).all() and (ys <= y2 + 1e-3).all()
            assert ((vis >= 0) & (vis <= 1)).all()


def test_shared_detector_trains_with_pose(cfgs):
    torch.manual_seed(0)
    det = DetectionDecoder(cfgs.detector)
    pose = KeypointDecoder(cfgs.keypoints, det)
    assert pose.detector.model is det.model and pose.link_dim == det.link_dim
    before = det.model.class_embed[0] is pose.detector.model.class_embed[0]
    weight = det.model.bbox_embed[0].layers[0].weight.detach().clone()
    opt = torch.optim.Adam(pose.parameters(), lr=1e-2)
    pose(make_batch(pose), make_targets()).loss.backward()
    opt.step()
    assert before and not torch.equal(weight, det.model.bbox_embed[0].layers[0].weight)


def test_save_and_load(decoder, tmp_path):
    decoder.eval()
    decoder.save_pretrained(tmp_path)
    loaded = KeypointDecoder.from_pretrained(tmp_path).eval()
    a, b = decoder.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    batch = make_batch(decoder, score_threshold=0.0, top_k=2)
    pa, pb = decoder(batch).predictions[0], loaded(batch).predictions[0]
    assert all((x.keypoints == y.keypoints).all() for x, y in zip(pa, pb, strict=True))
    shared = KeypointDecoder.from_pretrained(tmp_path, detector=decoder.detector)
    assert shared.detector is decoder.detector
    assert all(torch.equal(v, decoder.head.state_dict()[k]) for k, v in shared.head.state_dict().items())


@pytest.mark.parametrize(
    "keypoints, message",
    [
        (None, "keypoints: expected \\(2, 6, 3\\)"),
        (torch.zeros(2, 5, 3), "expected \\(2, 6, 3\\)"),
        (torch.full((2, 6, 3), 3.0), "visibility v in"),
        (torch.full((2, 6, 3), float("nan")), "finite"),
    ],
)
def test_bad_keypoint_targets_raise(decoder, keypoints, message):
    targets = make_targets()
    targets[0].keypoints = keypoints
    with pytest.raises(DecoderInputError, match=message):
        decoder(make_batch(decoder), targets)


def test_bad_link_states_raise(decoder):
    batch = make_batch(decoder)
    batch.phrase_states = batch.phrase_states.clone().fill_(float("nan"))
    with pytest.raises(DecoderInputError, match="NaN or inf"):
        decoder(batch)
    batch = make_batch(decoder)
    batch.phrases = [["star", "square"], []]
    with pytest.raises(DecoderInputError, match="empty phrase list"):
        decoder(batch, make_targets())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pose_on_cuda_with_cpu_targets(decoder):
    dec = decoder.cuda()
    batch = make_batch(dec, score_threshold=0.0, top_k=2)
    batch.pixel_values, batch.phrase_states = batch.pixel_values.cuda(), batch.phrase_states.cuda()
    batch.phrase_mask = batch.phrase_mask.cuda()
    out = dec(batch, make_targets())  # targets stay on the CPU
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.predictions[0][0].keypoints.shape == (K, 3)


def test_pose_runs_on_the_pretrained_detector(tmp_path, tiny_config):
    """[POSE] at real scale must see the loaded Grounding DINO, not a random detector of the same size."""
    from decoders.detection import DetectionDecoder
    from router.bindings import build_detector, build_keypoints
    from router.system import _pick_decoders, route_table

    torch.manual_seed(5)
    DetectionDecoder(tiny_config.decoders.detector).save_pretrained(tmp_path / "gd")
    cfg = tiny_config.model_copy(deep=True)
    cfg.decoders.detector.pretrained = str(tmp_path / "gd")
    det, pose = build_detector(cfg), build_keypoints(cfg)
    assert pose.detector is not det
    for (name, a), b in zip(det.model.state_dict().items(), pose.detector.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    cfg.decoders.keypoints.share_detector = True
    table, builders = route_table(cfg, None, None)
    built = _pick_decoders(cfg, table, builders, None)
    assert built["keypoints"].detector is built["detector"]
