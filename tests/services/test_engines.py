"""The plain engines (no Ray): batching splits results back per caller, rejections stay per caller."""

from __future__ import annotations

import pytest

from router.schemas import Request
from services.engines import DecoderEngine, MLLMEngine, Planned, Rejected
from tests.doubles import FakePipeline, scripted_answer


def test_decoder_engine_flattens_into_one_call_and_splits_back():
    fake = FakePipeline()
    mllm = MLLMEngine(fake)
    plans = [mllm.front([Request(instruction=t)]).plan["detector"] for t in ("detect a", "detect b, detect c", "detect d")]
    engine = DecoderEngine(fake, "detector")
    out = engine.run_batch(plans)
    assert fake.decoder_calls == [("detector", 4)]  # one decoder run for three callers
    assert [[r.phrase for r in rs] for rs in out] == [["a"], ["b", "c"], ["d"]]
    assert engine.stats() == {"decoder": "detector", "batches": 1, "max_batch": 3, "calls": 4}


def test_decoder_engine_rejects_misaligned_results():
    class Short(FakePipeline):
        def run_decoder(self, name, calls):
            return super().run_decoder(name, calls)[:-1]

    plan = MLLMEngine(Short()).front([Request(instruction="detect a")]).plan["detector"]
    with pytest.raises(RuntimeError, match="1 calls"):
        DecoderEngine(Short(), "detector").run_batch([plan])


def test_front_batch_one_generate_and_isolated_rejection():
    fake = FakePipeline()
    out = MLLMEngine(fake).front_batch(
        [[Request(instruction="detect x")], [Request(instruction="please reject")], [Request(instruction="draw y")]]
    )
    assert isinstance(out[1], Rejected) and "rejected" in out[1].message
    first, third = out[0], out[2]
    assert isinstance(first, Planned) and isinstance(third, Planned)
    assert [p.index for p in first.prepared] == [0] and [p.index for p in third.prepared] == [1]
    assert list(first.plan) == ["detector"] and list(third.plan) == ["generator"]
    assert third.plan["generator"][0].request == 1 and third.generations[0].index == 1


@pytest.mark.parametrize(
    ("instruction", "answer"),
    [
        ("detect the stars, segment the circles and draw a green square", "the stars [DET], the circles [SEG], a green square [GEN]"),
        ("what is this?", "an image"),
        ("pose", "it [POSE]"),
    ],
)
def test_scripted_answer(instruction, answer):
    assert scripted_answer(instruction) == answer


def test_generate_rejection_is_isolated_to_its_caller():
    fake = FakePipeline()
    out = MLLMEngine(fake).front_batch([[Request(instruction="detect a")], [Request(instruction="choke now")]])
    assert isinstance(out[0], Planned) and list(out[0].plan) == ["detector"]
    assert isinstance(out[1], Rejected) and "choke" in out[1].message


def test_scripted_pipeline_forces_each_group(scripted_pipeline):
    """Requests with different decoding options generate in separate groups, each with its own forced answers."""
    requests = [
        Request(instruction="detect the stars", options={"max_new_tokens": 20}),
        Request(instruction="draw a square", options={"max_new_tokens": 24}),
        Request(instruction="segment the circles", options={"max_new_tokens": 20}),
    ]
    gens = scripted_pipeline.generate(scripted_pipeline.prepare(requests))
    assert [[link.route for link in g.links] for g in gens] == [["DET"], ["GEN"], ["SEG"]]
    assert [g.index for g in gens] == [0, 1, 2]


def test_callers_with_the_same_request_index_keep_their_own_images(scripted_pipeline):
    """Two callers' calls both say request 0 (each numbered within its own MLLM batch); batched together,
    each must still be decoded on its own image, exactly as when it runs alone."""
    import io

    from PIL import Image, ImageDraw

    def image(kind: int) -> bytes:
        im = Image.new("RGB", (48, 48), "white")
        draw = ImageDraw.Draw(im)
        draw.ellipse((4, 4, 30, 30), fill="red") if kind else draw.rectangle((20, 20, 44, 40), fill="blue")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    mllm = MLLMEngine(scripted_pipeline)
    opts = {"score_threshold": 0.0, "max_new_tokens": 24}
    plans = [mllm.front([Request(instruction=t, images=[image(k)], options=opts)]).plan["detector"] for k, t in ((0, "detect the stars"), (1, "detect the circles"))]
    assert [c.request for p in plans for c in p] == [0, 0]
    engine = DecoderEngine(scripted_pipeline, "detector")
    alone = [engine.run_batch([p])[0] for p in plans]
    together = engine.run_batch(plans)
    for a, t in zip(alone, together, strict=True):
        assert [r.request for r in t] == [0] and len(t[0].items) == len(a[0].items) > 0
        assert {i.phrase for i in t[0].items} == {a[0].phrase}
        for x in a[0].items:  # the same detections, up to float noise of the batched forward
            assert any(max(abs(p - q) for p, q in zip(x.box, y.box, strict=True)) < 0.05 and abs(x.score - y.score) < 0.01 for y in t[0].items)
