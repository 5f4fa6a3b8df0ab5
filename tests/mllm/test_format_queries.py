"""Output-format-as-query decoding: the Hungarian set loss, parallel decoding into the same items as
autoregressive decoding, training through the joint loss, and the switch round-tripping through save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mllm.config import FormatQueryConfig
from mllm.format_queries import (
    SlotLogits,
    box_targets,
    decode_slots,
    match_slots,
    set_loss,
    slots_text,
)
from mllm.modeling import SuperLinkModel
from router.loss import collate, joint_loss
from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Options, Request
from router.system import build_system
from shapesworld.tasks import make_sample

K, B, S = 4, 16, 6  # class slots, location bins, format slots
CFG = FormatQueryConfig(slots=S)


def peaked(targets: list[tuple[int, tuple[int, int, int, int]]], order: list[int], scale: float = 50.0) -> SlotLogits:
    """Slot logits that put all mass on `targets` in slots `order` (the others: no object)."""
    cls = torch.full((1, S, K + 1), -scale)
    cls[0, :, K] = scale  # no object everywhere ...
    loc = torch.zeros(1, S, 4, B)
    for slot, (c, bins) in zip(order, targets, strict=True):
        cls[0, slot] = -scale
        cls[0, slot, c] = scale  # ... except the target slots
        for j, b in enumerate(bins):
            loc[0, slot, j] = -scale
            loc[0, slot, j, b] = scale
    return SlotLogits(classes=cls, locations=loc)


TARGETS = [(0, (1, 2, 5, 6)), (2, (8, 3, 12, 9)), (1, (0, 0, 15, 15))]


def test_perfect_predictions_give_near_zero_loss():
    loss = set_loss(peaked(TARGETS, [4, 0, 2]), [TARGETS], CFG)
    assert loss.item() < 1e-3
    wrong = set_loss(peaked([(3, (1, 2, 5, 6)), *TARGETS[1:]], [4, 0, 2]), [TARGETS], CFG)
    assert wrong.item() > 1.0  # one slot with the wrong class is not near zero


def test_loss_is_invariant_to_slot_and_target_order():
    torch.manual_seed(0)
    logits = SlotLogits(classes=torch.randn(1, S, K + 1), locations=torch.randn(1, S, 4, B))
    base = set_loss(logits, [TARGETS], CFG)
    perm = torch.tensor([3, 5, 0, 1, 4, 2])
    shuffled = SlotLogits(classes=logits.classes[:, perm], locations=logits.locations[:, perm])
    assert torch.isclose(set_loss(shuffled, [TARGETS], CFG), base, atol=1e-5)
    assert torch.isclose(set_loss(logits, [TARGETS[::-1]], CFG), base, atol=1e-5)


def test_matching_pairs_each_target_with_its_slot():
    slots, objs = match_slots(peaked(TARGETS, [4, 0, 2]), 0, TARGETS, CFG.l1_weight)
    assert dict(zip(objs, slots, strict=True)) == {0: 4, 1: 0, 2: 2}


def test_decoded_slots_write_the_answer_back():
    slots = decode_slots(peaked(TARGETS, [4, 0, 2]))[0]
    assert sorted((s.cls, s.bins) for s in slots) == sorted(TARGETS)
    assert sorted(box_targets(slots_text(slots))) == sorted(TARGETS)
    assert slots_text([]) == "none."
    assert box_targets("<cls_0><loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>") == []  # a polygon is no box


def test_decoded_boxes_are_well_formed():
    logits = SlotLogits(classes=torch.zeros(1, S, K + 1), locations=torch.randn(1, S, 4, B))
    logits.classes[..., 0] = 5.0  # every slot holds an object
    for s in decode_slots(logits)[0]:
        x1, y1, x2, y2 = s.bins
        assert x2 >= x1 and y2 >= y1


@pytest.fixture(scope="module")
def format_pipeline(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.model.format_queries = FormatQueryConfig(slots=8)
    torch.manual_seed(0)
    return Pipeline.from_config(cfg, decoders=[])


def _native_sample(bins: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    while True:
        s = make_sample("native_detection", rng, image_size=64, location_bins=bins)
        if "<cls_" in s.answer:
            return s


def test_parallel_decoding_gives_the_same_item_types_as_autoregressive(format_pipeline):
    pipe = format_pipeline
    model = pipe.system.model
    sample = _native_sample(pipe.config.model.vocab.location_bins)
    request = Request(images=[Image.fromarray(sample.image)], instruction=sample.instruction,
                      options=Options(max_new_tokens=40))
    forced = forced_answer_hook(model.tokenizer, [sample.answer])  # its first token starts a box answer
    calls = []
    run_llm = model.run_llm
    model.run_llm = lambda *a, **k: calls.append(1) or run_llm(*a, **k)
    try:
        out = {}
        for mode in (None, False):
            calls.clear()
            pipe.format_decoding = mode
            pipe.logits_hook = forced
            out[mode] = (pipe(request), len(calls))
    finally:
        del model.run_llm
        pipe.logits_hook = None
        pipe.format_decoding = None
    parallel, passes = out[None]
    autoregressive, ar_passes = out[False]
    assert passes == 2  # prefill (prompt + slots), then the leading space; the answer comes from the slots
    assert ar_passes > passes
    assert autoregressive.detections and all(d.route is None for d in autoregressive.detections)
    # Random slots: each group they write is a native Detection, or (a class slot the request did not bind)
    # the same bad_output part error the autoregressive path gives.
    groups = box_targets(parallel.raw_text)
    assert groups and parallel.raw_text.endswith(".")
    assert all(e.kind == "bad_output" and "is not bound" in e.message for e in parallel.errors)
    assert len(parallel.detections) + len(parallel.errors) == len(groups)
    assert {type(d) for d in parallel.detections} <= {type(d) for d in autoregressive.detections}
    assert all(d.route is None and d.label in sample.classes for d in parallel.detections)


def test_non_box_answers_stay_autoregressive(format_pipeline):
    pipe = format_pipeline
    sample = make_sample("vqa", np.random.default_rng(0), image_size=64, location_bins=32)
    pipe.logits_hook = forced_answer_hook(pipe.system.model.tokenizer, [sample.answer])
    try:
        resp = pipe(Request(images=[Image.fromarray(sample.image)], instruction=sample.instruction,
                            options=Options(max_new_tokens=8)))
    finally:
        pipe.logits_hook = None
    assert resp.raw_text == sample.answer


def test_joint_loss_trains_the_format_queries(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.model.format_queries = FormatQueryConfig(slots=8)
    torch.manual_seed(0)
    system, processor = build_system(cfg, decoders=[])
    bins = cfg.model.vocab.location_bins
    rng = np.random.default_rng(1)
    samples = [_native_sample(bins), make_sample("vqa", rng, 64, bins), _native_sample(bins, seed=5)]
    out = joint_loss(system, collate(processor, samples), decoders=False)
    assert set(out.parts) == {"lm", "format"}
    assert torch.isclose(out.total, out.parts["lm"] + out.parts["format"])
    out.parts["format"].backward()
    fq = system.model.format_queries
    assert fq.slots.weight.grad.abs().sum() > 0 and fq.roles.weight.grad.abs().sum() > 0


def test_format_switch_round_trips_through_save_load(tiny_config, tmp_path):
    cfg = tiny_config.model_copy(deep=True)
    cfg.model.format_queries = FormatQueryConfig(slots=5, no_object_weight=0.2)
    torch.manual_seed(0)
    system, _ = build_system(cfg, decoders=[])
    system.model.save_pretrained(tmp_path)
    loaded = SuperLinkModel.from_pretrained(tmp_path)
    assert loaded.config.format_queries == cfg.model.format_queries
    assert torch.equal(loaded.format_queries.slots.weight, system.model.format_queries.slots.weight)
    plain, _ = build_system(tiny_config, decoders=[])
    assert plain.model.format_queries is None  # off by default: no table, no checkpoint keys
    assert not any(k.startswith("format_queries.") for k in plain.model.state_dict())


def test_batched_rows_mixing_slots_and_tokens_equal_rows_alone(format_pipeline):
    """Slots in the prefill stay invisible to token-by-token rows; each row's answer is what it gets alone."""
    pipe = format_pipeline
    bins = pipe.config.model.vocab.location_bins
    samples = [_native_sample(bins), make_sample("vqa", np.random.default_rng(0), 64, bins)]
    requests = [Request(images=[Image.fromarray(s.image)], instruction=s.instruction, options=Options(max_new_tokens=40))
                for s in samples]  # fmt: skip
    tok = pipe.system.model.tokenizer
    # Force only the first token(s) of each answer: the rest is the model's own choice.
    heads = [tok(" " + s.answer, add_special_tokens=False)["input_ids"][:2] for s in samples]

    def hook_for(rows):
        def hook(step, logits):
            for r, k in enumerate(rows):
                if step < len(heads[k]):
                    logits[r] = float("-inf")
                    logits[r, heads[k][step]] = 0.0
            return logits

        return hook

    try:
        pipe.logits_hook = hook_for([0, 1])
        batched = pipe(requests)
        alone = []
        for k in range(2):
            pipe.logits_hook = hook_for([k])
            alone.append(pipe(requests[k]))
        pipe.format_decoding = False
        without_slots = pipe(requests[1])
    finally:
        pipe.logits_hook = None
        pipe.format_decoding = None
    assert box_targets(batched[0].raw_text)  # row 0 answered from its slots
    assert [r.raw_text for r in batched] == [r.raw_text for r in alone]
    assert batched[1].raw_text == without_slots.raw_text  # the slots in the prefill change nothing else


def test_polygon_requests_keep_their_format(format_pipeline):
    """A constrained row (an N-point polygon request) is never switched to the box slots."""
    pipe = format_pipeline
    bins = pipe.config.model.vocab.location_bins
    rng = np.random.default_rng(4)
    sample = next(s for s in (make_sample("polygon", rng, 64, bins) for _ in range(20)) if "<cls_" in s.answer)
    head = pipe.system.model.tokenizer(" " + sample.answer, add_special_tokens=False)["input_ids"][:2]

    def hook(step, logits):
        if step < len(head):
            logits[:] = float("-inf")
            logits[:, head[step]] = 0.0
        return logits

    pipe.logits_hook = hook
    try:
        resp = pipe(Request(images=[Image.fromarray(sample.image)], instruction=sample.instruction,
                            options=Options(max_new_tokens=120)))  # fmt: skip
    finally:
        pipe.logits_hook = None
    assert resp.polygons and not resp.detections and not box_targets(resp.raw_text)
