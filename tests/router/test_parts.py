"""Response.parts: every item tagged by kind; an item of no known type, or a failing conversion, is a part error."""

from __future__ import annotations

from dataclasses import replace

from router.bindings import default_bindings
from router.pipeline import Pipeline, forced_answer_hook
from router.schemas import Detection, Request, Response, response_model


def _not_an_item(prediction, calls, decoder):
    return [[{"label": c.phrase}] for c in calls]  # a dict, not a response Item


def _raises(prediction, calls, decoder):
    raise RuntimeError("conversion broke")


def test_bad_items_become_part_errors(tiny_config, scene_png):
    table = default_bindings()
    table = {
        "DET": table["DET"],
        "GRD": replace(table["GRD"], to_items=_not_an_item),
        "SEG": replace(table["SEG"], to_items=_raises),
    }
    pipe = Pipeline.from_config(tiny_config, bindings=table, decoders=["detector"])
    pipe.logits_hook = forced_answer_hook(pipe.processor.tokenizer, ["the circles [DET], the square [GRD], it [SEG]."])
    resp = pipe(Request(images=[scene_png], instruction="find them", options={"score_threshold": 0.0}))
    assert resp.routes == ["DET", "GRD", "SEG"]
    errors = {e.route: e for e in resp.errors}
    assert errors["GRD"].kind == "bad_output" and "dict" in errors["GRD"].message
    assert errors["SEG"].kind == "decoder_failed" and "conversion broke" in errors["SEG"].message
    assert "(bad output)" in resp.text and "(decoder failed)" in resp.text
    # The good part is answered, in both the legacy list and the tagged parts.
    assert resp.detections and all(d.route == "DET" for d in resp.detections)
    assert resp.parts == resp.detections and all(p.kind == "detection" for p in resp.parts)


def test_parts_round_trip_and_schema():
    resp = Response(text="", raw_text="", parts=[Detection(label="x", box=(0, 0, 1, 1), score=0.5)])
    back = Response.model_validate_json(resp.model_dump_json())
    assert isinstance(back.parts[0], Detection) and back == resp
    # A kind this process does not know (a newer server) is kept, not refused.
    other = Response.model_validate({"text": "", "raw_text": "", "parts": [{"kind": "depth", "route": "DEPTH", "mean": 2.0}]})
    assert other.parts[0].sent_kind == "depth" and other.parts[0].model_extra == {"mean": 2.0}
    schema = response_model().model_json_schema()
    mapping = schema["properties"]["parts"]["items"]["discriminator"]["mapping"]
    assert {"detection", "polygon", "point", "keypoints", "image"} <= set(mapping)
