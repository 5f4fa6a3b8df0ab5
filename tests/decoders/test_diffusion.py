"""[GEN] and [EDIT] decoders: overfit, gradients to the link states, seeded inference, save/load, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

from decoders.base import Decoder, DecoderInputError
from decoders.config import DiffusionConfig, EditorConfig
from decoders.diffusion import (
    DiffusionTargets,
    EditBatch,
    EditDecoder,
    GeneratedImage,
    GenerationBatch,
    GenerationDecoder,
)
from decoders.mapper import LinkMapper


@pytest.fixture(scope="module")
def gen_cfg(tiny_config) -> DiffusionConfig:
    return tiny_config.decoders.generator


@pytest.fixture(scope="module")
def edit_cfg(tiny_config) -> EditorConfig:
    return tiny_config.decoders.editor


def images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def states(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 8, dim, generator=torch.Generator().manual_seed(seed))  # (B, Q, link_dim)


def gen_batch(decoder: GenerationDecoder, **kw) -> GenerationBatch:
    return GenerationBatch(states(2, decoder.link_dim), **kw)


def edit_batch(decoder: EditDecoder, **kw) -> EditBatch:
    kw.setdefault("source_images", list(images(2, 1)))
    return EditBatch(states(2, decoder.link_dim), **kw)


def fixed_loss(decoder, batch, targets) -> torch.Tensor:
    # Same seed every call: same noise, timesteps and dropout, so losses are comparable across steps.
    return decoder(batch, targets, generator=torch.Generator().manual_seed(0)).loss


def overfit(decoder, batch, targets, steps: int = 15) -> tuple[float, float]:
    opt = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], lr=1e-3)
    first = last = 0.0
    for i in range(steps):
        loss = fixed_loss(decoder, batch, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first, last = (loss.item() if i == 0 else first), loss.item()
    return first, last


def same_images(a, b) -> bool:
    return all(np.array_equal(x.image, y.image) for x, y in zip(a.predictions, b.predictions, strict=True))


# ---- mapper ----------------------------------------------------------------------------------


def test_mapper_maps_link_states_to_fixed_length_prompt():
    mapper = LinkMapper(link_dim=24, cross_attention_dim=32, prompt_tokens=5, num_heads=4)
    out = mapper(torch.randn(3, 7, 24))
    assert out.shape == (3, 5, 32)
    assert mapper.null(3).shape == (3, 5, 32)
    dropped = mapper.drop_to_null(out, torch.tensor([True, False, True]))
    assert torch.equal(dropped[1], out[1])
    assert torch.equal(dropped[0], mapper.null_embedding[0]) and torch.equal(
        dropped[2], mapper.null_embedding[0]
    )


def test_config_rejects_bad_widths():
    with pytest.raises(ValueError, match="mapper_heads"):
        DiffusionConfig(cross_attention_dim=30, mapper_heads=4)
    with pytest.raises(ValueError, match="multiple of"):
        DiffusionConfig(image_size=34)


# ---- training --------------------------------------------------------------------------------


def test_generation_loss_falls_on_fixed_batch(gen_cfg):
    torch.manual_seed(0)
    decoder = GenerationDecoder(gen_cfg).train()
    first, last = overfit(decoder, gen_batch(decoder), DiffusionTargets(images(2, 0)))
    assert last < 0.5 * first, (first, last)


def test_edit_loss_falls_on_fixed_batch(edit_cfg):
    torch.manual_seed(0)
    decoder = EditDecoder(edit_cfg).train()
    first, last = overfit(decoder, edit_batch(decoder), DiffusionTargets(images(2, 0)))
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("kind", ["GEN", "EDIT"])
def test_gradients_reach_every_link_state(kind, gen_cfg, edit_cfg):
    torch.manual_seed(0)
    decoder = GenerationDecoder(gen_cfg) if kind == "GEN" else EditDecoder(edit_cfg)
    batch = gen_batch(decoder) if kind == "GEN" else edit_batch(decoder)
    batch.link_states.requires_grad_(True)
    decoder.eval()  # no condition dropout, so every item is conditioned
    fixed_loss(decoder, batch, DiffusionTargets(images(2, 0))).backward()
    grad = batch.link_states.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad.abs().sum(dim=(1, 2)) > 0).all()  # (B,) every item gets a gradient
    assert all(p.grad is None for p in decoder.vae.parameters())  # VAE frozen


def test_condition_dropout_replaces_condition_by_null(gen_cfg):
    cfg = gen_cfg.model_copy(update={"cond_drop": 0.99})
    decoder = GenerationDecoder(cfg).train()
    batch = gen_batch(decoder)
    batch.link_states.requires_grad_(True)
    fixed_loss(decoder, batch, DiffusionTargets(images(2, 0))).backward()
    # Both items dropped: the loss depends only on the null embedding.
    assert batch.link_states.grad is None or batch.link_states.grad.abs().sum() == 0
    assert decoder.mapper.null_embedding.grad.abs().sum() > 0


def test_frozen_unet_trains_only_the_mapper(gen_cfg):
    decoder = GenerationDecoder(gen_cfg.model_copy(update={"train_unet": False}))
    trainable = {n.split(".")[0] for n, p in decoder.named_parameters() if p.requires_grad}
    assert trainable == {"mapper"}


# ---- inference -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(gen_cfg) -> GenerationDecoder:
    torch.manual_seed(1)
    return GenerationDecoder(gen_cfg).eval()


@pytest.fixture(scope="module")
def editor(edit_cfg) -> EditDecoder:
    torch.manual_seed(2)
    return EditDecoder(edit_cfg).eval()


def test_generation_seeds_give_distinct_reproducible_images(generator, gen_cfg):
    out = generator(gen_batch(generator, seeds=[1, 2], steps=2))
    assert len(out.predictions) == 2 and out.loss is None
    for p in out.predictions:
        assert isinstance(p, GeneratedImage)
        assert p.image.shape == (gen_cfg.image_size, gen_cfg.image_size, 3) and p.image.dtype == np.uint8
    assert not np.array_equal(out.predictions[0].image, out.predictions[1].image)
    again = generator(gen_batch(generator, seeds=[1, 2], steps=2))
    assert same_images(out, again)
    assert out.predictions[0].to_pil().size == (gen_cfg.image_size, gen_cfg.image_size)


def test_generation_pipeline_gets_null_as_negative_embedding(generator):
    seen = []
    hook = generator.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"].clone()), with_kwargs=True
    )
    try:
        batch = gen_batch(generator, seeds=[1, 2], steps=1, guidance_scale=3.0)
        generator(batch)
    finally:
        hook.remove()
    cond = generator.mapper(batch.link_states)
    (embeds,) = seen  # (2B, T, D): StableDiffusionPipeline orders [negative, prompt]
    torch.testing.assert_close(embeds[:2], generator.mapper.null(2))
    torch.testing.assert_close(embeds[2:], cond)


def test_edit_returns_images_at_source_size(editor):
    sources = [images(1, 3, 32)[0], images(1, 4, 24)[0][:, :20]]  # (32, 32, 3) and (24, 20, 3)
    out = editor(edit_batch(editor, source_images=sources, seeds=[3, 4], steps=2))
    assert [p.image.shape for p in out.predictions] == [(32, 32, 3), (24, 20, 3)]
    assert all(p.image.dtype == np.uint8 for p in out.predictions)
    again = editor(edit_batch(editor, source_images=sources, seeds=[3, 4], steps=2))
    assert same_images(out, again)
    same = edit_batch(editor, source_images=[sources[0]] * 2, seeds=[7, 7], steps=2)
    same.link_states = same.link_states[:1].expand(2, -1, -1)  # identical items, identical seeds
    same_seed = editor(same)
    assert np.array_equal(same_seed.predictions[0].image, same_seed.predictions[1].image)


def test_edit_pipeline_guidance_rows_follow_instruct_pix2pix(editor):
    """IP2P runs rows [text+image, image only, neither]: embeds [cond, null, null], images [src, src, 0]."""
    seen = []
    hook = editor.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0].clone(), kw["encoder_hidden_states"].clone())), with_kwargs=True
    )
    try:
        batch = edit_batch(editor, seeds=[1, 2], steps=1, guidance_scale=3.0, image_guidance_scale=1.5)
        editor(batch)
    finally:
        hook.remove()
    ((sample, embeds),) = seen  # sample (3B, 2c, h, w), embeds (3B, T, D)
    c = editor.config.latent_channels
    cond, null = editor.mapper(batch.link_states), editor.mapper.null(2)
    torch.testing.assert_close(embeds, torch.cat([cond, null, null]))
    image_part = sample[:, c:]
    torch.testing.assert_close(image_part[:2], image_part[2:4])
    assert image_part[:2].abs().sum() > 0 and image_part[4:].abs().sum() == 0


# ---- save / load -----------------------------------------------------------------------------


def test_generation_save_load_round_trip(generator, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    loaded = GenerationDecoder.from_pretrained(tmp_path / "gen").eval()
    assert loaded.config == generator.config
    batch = gen_batch(generator, seeds=[5, 6], steps=2)
    assert same_images(generator(batch), loaded(batch))


def test_edit_save_load_round_trip(editor, tmp_path):
    editor.save_pretrained(tmp_path / "edit")
    loaded = EditDecoder.from_pretrained(tmp_path / "edit").eval()
    batch = edit_batch(editor, seeds=[5, 6], steps=2)
    assert same_images(editor(batch), loaded(batch))
    with pytest.raises(ValueError, match="expected 'GEN'"):
        GenerationDecoder.from_pretrained(tmp_path / "edit")


def save_diffusers_folder(pipeline_class, decoder, path) -> None:
    """A stock diffusers pipeline folder of `decoder`'s components, written without the decoder's own save code."""
    pipe = pipeline_class(
        vae=decoder.vae,
        text_encoder=None,
        tokenizer=None,
        unet=decoder.unet,
        scheduler=decoder.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)


def test_from_pretrained_sd_loads_a_plain_diffusers_folder(gen_cfg, tmp_path):
    # A checkpoint whose width differs from the config: the loaded architecture wins, the mapper follows it.
    other = GenerationDecoder(gen_cfg.model_copy(update={"cross_attention_dim": 16, "link_dim": 16}))
    save_diffusers_folder(StableDiffusionPipeline, other, tmp_path / "sd")
    loaded = GenerationDecoder.from_pretrained_sd(
        tmp_path / "sd", gen_cfg.model_copy(update={"link_dim": 48})
    )
    assert loaded.config.cross_attention_dim == 16 and loaded.link_dim == 48
    assert loaded.mapper(torch.randn(1, 3, 48)).shape == (1, gen_cfg.prompt_tokens, 16)
    torch.testing.assert_close(loaded.unet.conv_in.weight, other.unet.conv_in.weight)
    out = loaded.eval()(GenerationBatch(torch.randn(1, 3, 48), seeds=[0], steps=1))
    assert out.predictions[0].image.shape == (32, 32, 3)


def test_from_pretrained_ip2p_loads_a_plain_diffusers_folder(editor, edit_cfg, tmp_path):
    save_diffusers_folder(StableDiffusionInstructPix2PixPipeline, editor, tmp_path / "ip2p")
    loaded = EditDecoder.from_pretrained_ip2p(tmp_path / "ip2p", edit_cfg)
    assert loaded.unet.config.in_channels == 2 * edit_cfg.latent_channels
    torch.testing.assert_close(loaded.unet.conv_in.weight, editor.unet.conv_in.weight)


def test_loading_a_folder_without_components_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing unet/, scheduler/, vae/"):
        GenerationDecoder.from_pretrained_sd(tmp_path)
    with pytest.raises(FileNotFoundError, match="superlink_decoder.json"):
        EditDecoder.from_pretrained(tmp_path)


def test_sd_unet_refused_as_editor(generator, edit_cfg, tmp_path):
    generator.pipeline.save_pretrained(tmp_path / "sd")
    with pytest.raises(ValueError, match="in/out channels 4/4, expected 8/4"):
        EditDecoder.from_pretrained_ip2p(tmp_path / "sd", edit_cfg)


# ---- pixel space -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["GEN", "EDIT"])
def test_pixel_space_trains_and_samples(kind, gen_cfg, edit_cfg):
    torch.manual_seed(0)
    cfg = (gen_cfg if kind == "GEN" else edit_cfg).model_copy(update={"latent": False, "image_size": 16})
    decoder = GenerationDecoder(cfg) if kind == "GEN" else EditDecoder(cfg)
    assert decoder.vae is None and decoder.pipeline is None
    batch = gen_batch(decoder) if kind == "GEN" else edit_batch(decoder, source_images=list(images(2, 1, 16)))
    first, last = overfit(decoder, batch, DiffusionTargets(images(2, 0, 16)), steps=4)
    assert last < first
    batch.seeds, batch.steps = [1, 1], 2
    out = decoder.eval()(batch)
    assert [p.image.shape for p in out.predictions] == [(16, 16, 3)] * 2
    if kind == "GEN":  # same seed, same link states -> same image
        batch.link_states = batch.link_states[:1].expand(2, -1, -1)
        out = decoder(batch)
        assert np.array_equal(out.predictions[0].image, out.predictions[1].image)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_prediction_targets_and_zero_terminal_snr(prediction, gen_cfg):
    torch.manual_seed(0)
    cfg = gen_cfg.model_copy(
        update={"latent": False, "image_size": 16, "prediction_type": prediction, "zero_terminal_snr": True}
    )
    decoder = GenerationDecoder(cfg)
    sched = decoder.train_scheduler
    assert sched.config.prediction_type == prediction and decoder.scheduler.config.prediction_type == prediction
    assert float(sched.alphas_cumprod[-1]) < 1e-6  # pure noise at the last training timestep
    # The loss regresses the configured target: a UNet that outputs it exactly scores zero.
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(3)  # the loss draws its noise, then its timesteps, from the same generator
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (2,), generator=g)
    want = sched.get_velocity(x0, noise, t) if prediction == "v_prediction" else x0

    class Oracle(torch.nn.Module):
        config = decoder.unet.config

        def forward(self, inp, timestep, encoder_hidden_states):
            return type("Out", (), {"sample": want})()

    decoder.unet = Oracle()
    loss = decoder._noise_loss(x0, torch.zeros(2, 4, cfg.cross_attention_dim), None, torch.Generator().manual_seed(3))
    assert float(loss) < 1e-10
    decoder.unet = GenerationDecoder(cfg).unet
    batch = gen_batch(decoder)
    batch.seeds, batch.steps = [1, 2], 3
    decoder.scheduler.set_timesteps(3)
    assert int(decoder.scheduler.timesteps[0]) == sched.config.num_train_timesteps - 1  # "trailing": starts at T
    out = decoder.eval()(batch)
    assert [p.image.shape for p in out.predictions] == [(16, 16, 3)] * 2


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weighting_caps_each_timestep_as_an_x0_loss(prediction, gen_cfg):
    from decoders.diffusion import min_snr_weights

    cfg = gen_cfg.model_copy(update={"latent": False, "image_size": 16, "prediction_type": prediction})
    sched = GenerationDecoder(cfg).train_scheduler
    t = torch.tensor([0, 100, 400, 900])
    alphas = sched.alphas_cumprod[t].double()
    snr = alphas / (1 - alphas)
    # as an x0 loss: epsilon MSE = x0 MSE * SNR, v MSE = x0 MSE * (SNR + 1), so these weights make it min(SNR, 5)
    to_x0 = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction]
    got = min_snr_weights(sched, t, 5.0).double() * to_x0
    assert torch.allclose(got, snr.clamp(max=5.0), rtol=1e-4)
    assert got[0] == pytest.approx(5.0, rel=1e-4) and got[-1] < 5.0  # clean steps capped, noisy ones kept


def test_min_snr_loss_is_the_weighted_mean_of_the_per_item_losses(gen_cfg):
    from decoders.diffusion import min_snr_weights

    cfg = gen_cfg.model_copy(update={"latent": False, "image_size": 16, "prediction_type": "v_prediction"})
    plain, weighted = GenerationDecoder(cfg), GenerationDecoder(cfg.model_copy(update={"loss_weighting": "min_snr"}))
    weighted.load_state_dict(plain.state_dict())
    x0, cond = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 4, cfg.cross_attention_dim)
    batched = weighted._noise_loss(x0, cond, None, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the loss draws its noise, then its timesteps, from this generator
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, cfg.num_train_timesteps, (3,), generator=g)
    sched = plain.train_scheduler
    with torch.no_grad():
        pred = plain.unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        per = (pred - sched.get_velocity(x0, noise, t)).pow(2).mean(dim=(1, 2, 3))
    assert float(batched) == pytest.approx(float((per * min_snr_weights(sched, t, 5.0)).mean()), rel=1e-5)
    assert float(plain._noise_loss(x0, cond, None, torch.Generator().manual_seed(7))) == pytest.approx(
        float(per.mean()), rel=1e-5)  # uniform: the plain mean


# ---- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"link_states": torch.randn(8, 32)}, r"expected shape \(batch, num_queries, 32\)"),
        ({"link_states": torch.randn(2, 8, 31)}, r"expected shape \(\.\.\., num_queries, 32\)"),
        ({"link_states": torch.full((2, 8, 32), float("nan"))}, "NaN or inf"),
        ({"link_states": torch.full((2, 8, 32), float("inf"))}, "NaN or inf"),
        ({"steps": 0}, r"steps must be an integer in \[1, 1000\]"),
        ({"steps": True}, "steps must be an integer"),
        ({"guidance_scale": 0.5}, "guidance_scale must be a finite number >= 1"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number >= 1"),
        ({"seeds": [1]}, "seeds must be a list of 2 integers"),
    ],
)
def test_generation_bad_inputs(generator, change, match):
    batch = gen_batch(generator, seeds=[0, 1], steps=1)
    for k, v in change.items():
        setattr(batch, k, v)
    with pytest.raises(DecoderInputError, match=match):
        generator(batch)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"source_images": None}, "expected 2 source images .* got none"),
        ({"source_images": list(images(1, 0))}, "expected 2 source images .* got 1"),
        ({"source_images": [np.zeros((32, 32, 4), np.uint8)] * 2}, r"expected shape \(H, W, 3\)"),
        ({"image_guidance_scale": 0.9}, "image_guidance_scale must be a finite number >= 1"),
        ({"steps": -3}, "steps must be an integer"),
    ],
)
def test_edit_bad_inputs(editor, change, match):
    batch = edit_batch(editor, seeds=[0, 1], steps=1)
    for k, v in change.items():
        setattr(batch, k, v)
    with pytest.raises(DecoderInputError, match=match):
        editor(batch)


def test_images_over_the_size_limit_are_refused(edit_cfg):
    decoder = EditDecoder(edit_cfg.model_copy(update={"max_image_pixels": 32 * 32}))
    big = list(images(2, 0, 40))
    with pytest.raises(DecoderInputError, match="exceeds the limit of 1024 pixels"):
        decoder(edit_batch(decoder, source_images=big, steps=1))
    with pytest.raises(DecoderInputError, match="exceeds the limit"):
        decoder(edit_batch(decoder), DiffusionTargets(big))


def test_decoders_satisfy_the_protocol_and_check_batch_types(generator, editor):
    assert isinstance(generator, Decoder) and isinstance(editor, Decoder)
    assert generator.link_dim == editor.link_dim == 32
    with pytest.raises(DecoderInputError, match="expected a EditBatch, got GenerationBatch"):
        editor(gen_batch(editor))
    with pytest.raises(DecoderInputError, match="targets must be DiffusionTargets"):
        generator(gen_batch(generator), list(images(2, 0)))


def test_targets_must_match_the_batch(generator):
    with pytest.raises(DecoderInputError, match="expected 2 target images .* got 3"):
        generator(gen_batch(generator), DiffusionTargets(images(3, 0)))


# ---- teacher conditioning and link alignment -------------------------------------------------


def test_frozen_text_encoder_is_fixed_and_separates_descriptions():
    from decoders.text_encoder import FrozenTextEncoder

    enc = FrozenTextEncoder(dim=32, tokens=4)
    a, b, again = enc(["red circle", "blue square"]), enc(["blue square"]), FrozenTextEncoder(32, 4)(["red circle"])
    assert a.shape == (2, 4, 32)
    assert torch.equal(a[1], b[0]) and torch.equal(a[0], again[0])  # no state: the same text, the same embedding
    assert a[0, 2:].abs().sum() == 0  # two words, two tokens; the rest is padding
    cos = torch.nn.functional.cosine_similarity(a[0, :2].flatten(), a[1, :2].flatten(), dim=0)
    assert abs(float(cos)) < 0.5


@pytest.mark.parametrize("kind", ["GEN", "EDIT"])
def test_alignment_loss_pulls_the_mapped_link_towards_the_text_encoder(kind, gen_cfg, edit_cfg):
    torch.manual_seed(0)
    cfg = (gen_cfg if kind == "GEN" else edit_cfg).model_copy(update={"align_weight": 0.1})
    decoder = (GenerationDecoder if kind == "GEN" else EditDecoder)(cfg).eval()
    batch = gen_batch(decoder) if kind == "GEN" else edit_batch(decoder)
    targets = DiffusionTargets(images(2, 0), texts=["red circle", "two blue squares"])
    out = decoder(batch, targets, generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == {"noise_mse", "align_mse"}
    torch.testing.assert_close(out.loss, out.losses["noise_mse"] + 0.1 * out.losses["align_mse"])
    plain = decoder(batch, DiffusionTargets(images(2, 0)), generator=torch.Generator().manual_seed(0))
    assert set(plain.losses) == {"noise_mse"}  # no descriptions, no alignment


def test_text_conditioning_trains_the_unet_on_the_teacher_and_the_mapper_only_by_alignment(gen_cfg):
    torch.manual_seed(0)
    decoder = GenerationDecoder(gen_cfg.model_copy(update={"align_weight": 0.1})).eval()
    decoder.conditioning = "text"
    batch = gen_batch(decoder)
    targets = DiffusionTargets(images(2, 0), texts=["red circle", "blue square"])
    out = decoder(batch, targets, generator=torch.Generator().manual_seed(0))
    out.losses["noise_mse"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in decoder.mapper.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.unet.parameters())
    decoder.zero_grad()
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.mapper.parameters())
    with pytest.raises(ValueError, match="needs DiffusionTargets.texts"):
        decoder(batch, DiffusionTargets(images(2, 0)))
