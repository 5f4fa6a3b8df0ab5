"""Teacher decoders and link alignment (training/teacher.py, bench/aligned_links.py) on the tiny preset."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from router.pipeline import Pipeline
from training.teacher import (
    Teacher,
    align_image_links,
    align_links,
    anchor_links,
    build_teacher,
    install_decoders,
    link_texts,
    train_teacher,
)

ROOT = Path(__file__).resolve().parents[2]


def test_routes_on_one_decoder_share_it_and_their_encoder_by_kind(tiny_config):
    teacher = build_teacher(tiny_config, ("DET", "SEG", "GRD"))
    assert list(teacher.system.decoders) == ["detector"]
    assert sorted(teacher.encoders) == ["detector_attn", "detector_mean"]
    assert teacher.encoder("DET") is teacher.encoder("SEG") is not teacher.encoder("GRD")
    pose = build_teacher(tiny_config, ("POSE",))
    assert list(pose.system.decoders) == ["keypoints"] and list(pose.encoders) == ["keypoints_mean"]
    with pytest.raises(ValueError, match="not perception routes"):
        build_teacher(tiny_config, ("GEN",))


def test_teacher_trains_every_route_and_round_trips(tiny_config, tmp_path):
    before = build_teacher(tiny_config, ("DET", "GRD"))
    teacher = train_teacher(tiny_config, ("DET", "GRD"), steps=4, clock="wall")
    assert teacher.steps == 4 and [len(teacher.losses[r]) for r in ("DET", "GRD")] == [2, 2]
    assert all(math.isfinite(v) for vs in teacher.losses.values() for v in vs)
    # both encoders learned words, and the shared detector moved
    assert teacher.encoder("DET").vocab and teacher.encoder("GRD").vocab
    w0 = before.system.decoders["detector"].state_dict()
    w1 = teacher.system.decoders["detector"].state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w1 if w1[k].is_floating_point())

    teacher.save(tmp_path / "t")
    again = Teacher.load(tmp_path / "t")
    assert again.routes == ("DET", "GRD") and again.steps == 4
    for k, v in teacher.system.decoders.state_dict().items():
        assert torch.equal(v, again.system.decoders.state_dict()[k]), k
    texts = ["red circle", "the star left of the square", "a word never seen"]
    for r in ("DET", "GRD"):
        assert torch.equal(teacher.targets(r, texts), again.targets(r, texts))
    with pytest.raises(FileNotFoundError, match="not a teacher folder"):
        Teacher.load(tmp_path)


def test_teacher_goes_on_from_a_saved_one(tiny_config, tmp_path):
    first = train_teacher(tiny_config, ("DET", "GRD"), steps=2, clock="wall")
    first.save(tmp_path / "t")
    saved = Teacher.load(tmp_path / "t", tiny_config)
    w0 = {k: v.clone() for k, v in saved.system.decoders.state_dict().items()}
    seen: list[int] = []
    more = train_teacher(tiny_config, ("DET", "GRD"), steps=2, clock="wall", init=saved,
                         log=lambda m: seen.append(1))
    assert more.steps == 4 and more.train_s >= first.train_s  # numbering and time go on from the saved teacher
    assert [len(more.losses[r]) for r in ("DET", "GRD")] == [1, 1]  # the two new steps, one per route
    w1 = more.system.decoders.state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w1 if w1[k].is_floating_point())
    with pytest.raises(ValueError, match="trains routes"):
        train_teacher(tiny_config, ("DET",), steps=1, clock="wall", init=Teacher.load(tmp_path / "t", tiny_config))
    with pytest.raises(ValueError, match="needs a number of steps"):
        train_teacher(tiny_config, ("DET",), budget_s=1.0, clock="wall", lr_schedule="cosine")


def test_alignment_installs_the_teacher_and_fits_the_projector_only():
    pipe = Pipeline.from_pretrained("tiny")
    try:
        teacher = train_teacher(pipe.config, ("DET",), steps=2, clock="wall")
        llm = {k: v.clone() for k, v in pipe.system.model.state_dict().items()}
        proj = {k: v.clone() for k, v in pipe.system.projectors["DET"].state_dict().items()}
        out = align_links(pipe, teacher, steps=40, lr=1e-2, warmup=1)
        # the decoder is the teacher's, the MLLM did not move, the projector did, and its MSE fell
        for k, v in teacher.system.decoders["detector"].state_dict().items():
            assert torch.equal(pipe.system.decoders["detector"].state_dict()[k], v), k
        assert all(torch.equal(v, pipe.system.model.state_dict()[k]) for k, v in llm.items())
        assert any(not torch.equal(v, pipe.system.projectors["DET"].state_dict()[k]) for k, v in proj.items())
        mse = out.mse["DET"]
        assert len(mse) == 40 and np.mean(mse[-10:]) < 0.9 * np.mean(mse[:5]), mse
        assert out.cosine["DET"] > 0.3
    finally:
        pipe.close()


def test_alignment_can_train_the_llm_but_not_the_vision_tower():
    pipe = Pipeline.from_pretrained("tiny")
    try:
        teacher = train_teacher(pipe.config, ("SEG",), steps=1, clock="wall")
        model = pipe.system.model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        align_links(pipe, teacher, steps=2, train_llm=True, llm_lr=1e-3, warmup=1)
        moved = {k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
        assert any("language_model" in k for k in moved), sorted(moved)[:5]
        assert not any("vision_tower" in k or "multi_modal_projector" in k for k in moved), sorted(moved)[:5]
    finally:
        pipe.close()


def test_alignment_with_the_llm_replays_the_whole_training_mix(monkeypatch):
    import training.teacher

    pipe = Pipeline.from_pretrained("tiny")
    drawn: list[set[str]] = []
    real = training.teacher.batch_samples

    def spy(cfg, step, micro, rank, data=None):
        batch = real(cfg, step, micro, rank, data)
        drawn.append({s.task for s in batch})
        return batch

    monkeypatch.setattr(training.teacher, "batch_samples", spy)
    try:
        teacher = train_teacher(pipe.config, ("SEG",), steps=1, clock="wall")
        align_links(pipe, teacher, steps=3, train_llm=True, llm_lr=1e-3, warmup=1)
        assert len(drawn) == 3  # one replay batch per step, from the model's own task mix (not just [SEG])
        assert set().union(*drawn) - {"segmentation"}, drawn
        align_links(pipe, teacher, steps=2, train_llm=True, replay_weight=0.0, warmup=1)
        align_links(pipe, teacher, steps=2, warmup=1)  # a frozen LLM has nothing to replay
        assert len(drawn) == 3
    finally:
        pipe.close()


def test_link_texts_follow_the_link_groups(tiny_config):
    from shapesworld.tasks import make_sample

    rng = np.random.default_rng(0)
    samples = [make_sample("detection", rng, 128, tiny_config.model.vocab.location_bins) for _ in range(3)]
    index = torch.tensor([[r, 0] for r, s in enumerate(samples) for t in s.targets if t.route == "DET"])
    assert link_texts(samples, "DET", index) == [t.phrase for s in samples for t in s.targets if t.route == "DET"]


def test_install_refuses_a_system_without_the_decoder(tiny_config):
    teacher = build_teacher(tiny_config, ("POSE",))
    det_only = build_teacher(tiny_config, ("DET",))
    with pytest.raises(ValueError, match="no decoder 'keypoints'"):
        install_decoders(det_only.system, teacher)


def test_bench_teacher_then_align_exports_a_loadable_model(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> dict:
        done = subprocess.run([sys.executable, "bench/aligned_links.py", *args, "--json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    t = run("teacher", "--config", "tiny", "--routes", "DET", "--steps", "2", "--n", "11", "--out", str(tmp_path / "t"))
    assert t["steps"] == 2 and set(t["DET"]) >= {"det_ap", "det_ap50"}
    a = run("align", "--model", "tiny", "--teacher", str(tmp_path / "t"), "--steps", "2", "--scenes", "2",
            "--export", str(tmp_path / "m"))
    assert a["DET"]["forced"]["phrase_acc"] == 1.0 and -1.0 <= a["align"]["DET"]["cosine"] <= 1.0
    pipe = Pipeline.from_pretrained(tmp_path / "m")
    pipe.close()


def _perturbed(pipe: Pipeline, seed: int) -> None:
    """Move every weight of `pipe`'s system a little, so it is another model of the same shape."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pipe.system.parameters():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def test_anchoring_copies_the_reference_heads_and_pulls_the_llm_to_its_links(monkeypatch):
    import training.teacher

    pipe, reference = Pipeline.from_pretrained("tiny"), Pipeline.from_pretrained("tiny")
    _perturbed(reference, 0)
    wordings: list[str] = []
    real = training.teacher.task_samples

    def spy(cfg, task, step, seed, wording="template"):
        wordings.append(wording)
        return real(cfg, task, step, seed, wording=wording)

    monkeypatch.setattr(training.teacher, "task_samples", spy)
    try:
        model = pipe.system.model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ref_state = {k: v.clone() for k, v in reference.system.state_dict().items()}
        out = anchor_links(pipe, reference, ("DET", "POSE"), steps=40, llm_lr=1e-3, replay_weight=0.0,
                           wording="train", warmup=1)
        # the reference's decoders and projectors are in place and nothing of the reference moved
        for name in ("detector", "keypoints"):
            for k, v in reference.system.decoders[name].state_dict().items():
                assert torch.equal(pipe.system.decoders[name].state_dict()[k], v), (name, k)
        for r in ("DET", "POSE"):
            for k, v in reference.system.projectors[r].state_dict().items():
                assert torch.equal(pipe.system.projectors[r].state_dict()[k], v), (r, k)
        assert all(torch.equal(v, ref_state[k]) for k, v in reference.system.state_dict().items())
        # the LLM learnt, the image side did not, and the links moved towards the reference's
        moved = {k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
        assert any("language_model" in k for k in moved), sorted(moved)[:5]
        assert not any("vision_tower" in k or "multi_modal_projector" in k for k in moved), sorted(moved)[:5]
        for r in ("DET", "POSE"):
            mse = out.mse[r]
            assert len(mse) == 20 and np.mean(mse[-5:]) < 0.8 * np.mean(mse[:3]), (r, mse)
        # every step words one batch as a template (the reference's) and the same batch as training wording
        assert wordings == ["template", "train"] * 40
    finally:
        pipe.close()
        reference.close()


def test_anchoring_refuses_routes_the_models_do_not_share_and_held_out_wordings():
    pipe = Pipeline.from_pretrained("tiny")
    try:
        with pytest.raises(ValueError, match="not deployed in both models"):
            anchor_links(pipe, pipe, ("DET", "BOGUS"), steps=1)
        with pytest.raises(ValueError, match="'heldout' is not a training wording"):
            anchor_links(pipe, pipe, ("DET",), steps=1, wording="heldout")
    finally:
        pipe.close()


def test_bench_anchor_exports_a_loadable_model(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "bench/aligned_links.py", "anchor", "--model", "tiny", "--reference",
                           "tiny", "--routes", "SEG", "--steps", "2", "--scenes", "2", "--export", str(tmp_path / "m"),
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["routes"] == ["SEG"] and -1.0 <= out["anchor"]["cosine"]["SEG"] <= 1.0
    assert out["SEG"]["forced"]["phrase_acc"] == 1.0
    Pipeline.from_pretrained(tmp_path / "m").close()


def test_image_link_alignment_fits_projectors_and_mappers_to_the_text_encoder_and_leaves_the_unets():
    pipe = Pipeline.from_pretrained("tiny")
    try:
        system = pipe.system
        gen = system.decoder_for("GEN")
        llm = {k: v.clone() for k, v in system.model.state_dict().items()}
        unet = {k: v.clone() for k, v in gen.unet.state_dict().items()}
        mapper = {k: v.clone() for k, v in gen.mapper.state_dict().items()}
        out = align_image_links(pipe, ("GEN",), steps=40, lr=1e-2, warmup=1)
        assert all(torch.equal(v, system.model.state_dict()[k]) for k, v in llm.items())  # frozen LLM by default
        assert all(torch.equal(v, gen.unet.state_dict()[k]) for k, v in unet.items())  # the UNet is not touched
        assert any(not torch.equal(v, gen.mapper.state_dict()[k]) for k, v in mapper.items())
        mse = out.mse["GEN"]
        assert len(mse) == 40 and np.mean(mse[-10:]) < 0.9 * np.mean(mse[:5]), mse
        with pytest.raises(ValueError, match="not deployed image routes; accepted: GEN, EDIT"):
            align_image_links(pipe, ("DET",), steps=1)
    finally:
        pipe.close()


def test_bench_align_images_reports_and_exports(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "bench/aligned_links.py", "align-images", "--model", "tiny", "--routes",
                           "edit", "--steps", "2", "--scenes", "0", "--export", str(tmp_path / "m"), "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["routes"] == ["EDIT"] and -1.0 <= out["align"]["cosine"]["EDIT"] <= 1.0
    assert out["align"]["mse_last100"]["EDIT"] > 0.0
    Pipeline.from_pretrained(tmp_path / "m").close()
