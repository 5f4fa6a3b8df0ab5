"""Specialist ceilings (training/specialists.py, bench/specialists.py) on the tiny preset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import bench.specialists as bench
import router.system
from evaluation.suite import eval_samples
from training.specialists import (
    METRICS,
    PhraseEncoder,
    ReferencePipeline,
    build_decoder_specialist,
    decoder_specialist_loss,
    evaluate_specialist,
    family_pairs,
    ratios,
    task_samples,
    train_specialist,
)


@pytest.fixture
def no_mllm(monkeypatch):
    """Any attempt to build the MLLM fails: decoder specialists must not need it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a decoder specialist built the MLLM")

    monkeypatch.setattr(router.system, "build_model", refuse)


@pytest.mark.parametrize("route", ["DET", "GRD"])
def test_decoder_specialist_trains_and_scores_without_an_llm(tiny_config, no_mllm, route):
    before = build_decoder_specialist(tiny_config, route)
    spec = train_specialist(tiny_config, route, steps=3)
    assert spec.system.model is None
    assert spec.steps == 3 and len(spec.losses) == 3 and all(math.isfinite(v) for v in spec.losses)
    # the encoder learned words and its embeddings moved: the decoder loss reached the conditioning
    assert spec.encoder.vocab
    assert not torch.allclose(spec.encoder.embed.weight, before.encoder.embed.weight)
    out = evaluate_specialist(spec, n=11)  # 1 scene per family
    assert set(METRICS[route]) <= set(out)
    assert all(out[m] is not None and 0.0 <= out[m] <= 1.0 for m in METRICS[route])
    assert out["scenes"] == 1 and out["errors"] == 0


def test_generation_specialist_conditions_on_the_prompt(tiny_config, no_mllm):
    spec = build_decoder_specialist(tiny_config, "GEN")
    samples = task_samples(tiny_config, "generation", 0, seed=0)
    loss = decoder_specialist_loss(spec, samples)
    loss.backward()
    assert torch.isfinite(loss)
    # the words of the prompt (not the phrase "image") got embeddings and gradient
    colours = [w for w in ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "brown")
               if w in spec.encoder.vocab]
    assert colours, f"no colour word of the prompts reached the encoder: {sorted(spec.encoder.vocab)}"
    grad = spec.encoder.embed.weight.grad
    assert grad is not None and grad[spec.encoder.vocab[colours[0]]].abs().sum() > 0


def test_reference_pipeline_feeds_encoder_vectors_through_an_exact_identity(tiny_config, no_mllm):
    spec = build_decoder_specialist(tiny_config, "DET")
    x = torch.randn(3, tiny_config.model.routes["DET"], spec.encoder.embed.embedding_dim)
    assert torch.equal(spec.system.project("DET", x), x)
    pairs, _ = family_pairs(tiny_config, "detection", "val", 11, 0)
    pipe = ReferencePipeline(spec)
    pipe.answers = [(s, s.answer) for _, s in pairs]
    from evaluation.suite import to_request

    gens = pipe.generate(pipe.prepare([to_request(f, s, i) for i, (f, s) in enumerate(pairs)]))
    (sample,) = [s for _, s in pairs]
    assert [link.phrase for link in gens[0].links] == [t.phrase for t in sample.targets]
    spec.encoder.eval()
    want = spec.encoder([t.phrase for t in sample.targets]).detach().numpy()
    np.testing.assert_allclose(np.stack([link.states for link in gens[0].links]), want, rtol=1e-6)


def test_family_pairs_are_the_eval_scenes(tiny_config):
    n = 33
    full = eval_samples("val", n, 0, tiny_config.training.image_size, tiny_config.model.vocab.location_bins)
    pairs, offset = family_pairs(tiny_config, "vqa", "val", n, 0)
    assert len(pairs) == 3 and all(f == "vqa" for f, _ in pairs)
    assert [s.instruction for _, s in pairs] == [s.instruction for _, s in full[offset : offset + 3]]


def test_phrase_encoder_modes():
    torch.manual_seed(0)
    mean, attn = PhraseEncoder(4, 32, "mean"), PhraseEncoder(4, 32, "attn")
    texts = ["star left of the circle", "circle left of the star", "red square"]
    m, a = mean(texts), attn(texts)
    assert m.shape == a.shape == (3, 4, 32)
    assert torch.allclose(m[0], m[1])  # a bag of words ignores order
    assert not torch.allclose(a[0], a[1])  # the text encoder does not
    assert not torch.allclose(m[0], m[2])
    mean.eval()
    unseen = mean(["zebra"])  # unseen at eval -> UNK, no new vocabulary entry
    assert "zebra" not in mean.vocab and torch.allclose(unseen[0, 0] - mean.query_embed[0], mean.embed.weight[0])
    with pytest.raises(ValueError, match="unknown encoder"):
        PhraseEncoder(4, 32, "lstm")


def test_language_specialist_trains_the_model_on_one_task(tiny_config):
    spec = train_specialist(tiny_config, "vqa", steps=2)
    assert spec.system.model is not None and len(spec.system.decoders) == 0
    assert len(spec.losses) == 2 and all(math.isfinite(v) for v in spec.losses)
    out = evaluate_specialist(spec, n=11)
    assert out["scenes"] == 1 and out["vqa_acc"] in (0.0, 1.0)


def test_cpu_budget_stops_training(tiny_config, no_mllm):
    spec = train_specialist(tiny_config, "SEG", budget_s=0.5, clock="cpu")
    assert spec.steps >= 1 and spec.train_cpu_s is not None and 0.5 <= spec.train_cpu_s < 30
    with pytest.raises(ValueError, match="unknown clock"):
        train_specialist(tiny_config, "SEG", budget_s=0.5, clock="gpu")
    with pytest.raises(ValueError, match="time budget"):
        train_specialist(tiny_config, "SEG")


def test_ratios():
    r = ratios({"det_ap": 0.5, "seg_ap": 0.0, "vqa_acc": 0.8}, {"det_ap": 0.25, "seg_ap": 0.1, "vqa_acc": None})
    assert r["det_ap"] == 0.5 and r["seg_ap"] is None and r["vqa_acc"] is None and r["gen_acc"] is None


def test_bench_prints_specialist_generalist_and_ratio(tmp_path, capsys, no_mllm):
    general = {"n": 11, "det_ap": 0.2, "det_ap50": 0.3}
    (tmp_path / "gen.json").write_text("some log line\n" + json.dumps(general) + "\n")
    args = ["--config", "tiny", "--steps", "2", "--n", "11", "--only", "det", "--generalist-json",
            str(tmp_path / "gen.json"), "--save", str(tmp_path / "partial.json"), "--json"]
    bench.main(args)
    stdout = capsys.readouterr().out
    out = json.loads(stdout.strip().splitlines()[-1])
    assert {k: v for k, v in out.items() if not k.startswith("ratio.")} == json.loads((tmp_path / "partial.json").read_text())
    assert out["steps.DET"] == 2 and out["generalist.det_ap"] == 0.2
    for m in ("det_ap", "det_ap50"):
        s = out[f"specialist.{m}"]
        assert s is not None and 0.0 <= s <= 1.0
        assert out[f"ratio.{m}"] == (None if s == 0 else round(general[m] / s, 3))
    assert "| DET | det_ap |" in stdout
    # shards saved by --save combine with --merge into the same table and ratios
    other = {"n": 11, "specialist.vqa_acc": 0.5, "generalist.vqa_acc": 0.25, "steps.vqa": 9, "train_s.vqa": 1.0}
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged = bench.main(["--merge", str(tmp_path / "partial.json"), str(tmp_path / "other.json")])
    assert merged["ratio.vqa_acc"] == 0.5 and merged["specialist.det_ap"] == out["specialist.det_ap"]
    capsys.readouterr()
    with pytest.raises(SystemExit, match="n=11"):  # a generalist result at another n is refused
        bench.main(args[:5] + ["22"] + args[6:])
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "DET,ocr"])
    with pytest.raises(SystemExit, match="--set: .*unknown key 'widths'"):
        bench.main(["--config", "tiny", "--steps", "1", "--only", "GEN", "--no-generalist",
                    "--set", "decoders.generator.widths=[8]"])


def test_bench_overrides_reach_the_specialist(monkeypatch, capsys, no_mllm):
    """--set and --decoder-lr change the config and the rate the specialist trains with."""
    seen = {}
    real = bench.train_specialist

    def spy(cfg, name, **kw):
        seen.update(cfg=cfg, kw=kw)
        return real(cfg, name, **kw)

    monkeypatch.setattr(bench, "train_specialist", spy)
    out = bench.main(["--config", "tiny", "--steps", "1", "--n", "24", "--only", "GEN", "--no-generalist",
                      "--set", "decoders.generator.loss_weighting=min_snr", "--decoder-lr", "1e-3"])
    capsys.readouterr()
    assert seen["cfg"].decoders.generator.loss_weighting == "min_snr" and seen["kw"]["lr"] == 1e-3
    assert out["overrides"] == ["decoders.generator.loss_weighting=min_snr"] and out["decoder_lr"] == 1e-3
    assert 0.0 <= out["specialist.gen_object_f1"] <= 1.0 and 0.0 <= out["specialist.gen_color_f1"] <= 1.0
