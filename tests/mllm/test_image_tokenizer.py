"""Language-guided image tokenizer: output shape, dependence on the instruction, training, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllm.config import ConfigError, ImageTokenizerConfig, MLLMConfig, validate_mapping
from mllm.modeling import SuperLinkModel
from router.loss import collate, joint_loss
from router.system import build_system
from shapesworld.tasks import make_sample

QUERIES = 6


def _system(tiny_config, tokenizer: ImageTokenizerConfig):
    cfg = tiny_config.model_copy(deep=True)
    cfg.model.image_tokenizer = tokenizer
    torch.manual_seed(0)
    return build_system(cfg, decoders=[])


@pytest.fixture(scope="module")
def replace_system(tiny_config):
    return _system(tiny_config, ImageTokenizerConfig(num_queries=QUERIES, combine="replace"))


def _visual_tokens(system, processor, instructions: list[str], image: np.ndarray) -> torch.Tensor:
    """The embeddings at the <image> slots of each row: (B, M, D)."""
    model = system.model
    batch = processor(instructions, images=[[image]] * len(instructions))
    with torch.no_grad():
        embeds = model.prepare_embeds(batch["input_ids"], batch["pixel_values"])
    slots = batch["input_ids"] == model.token_ids.image
    return embeds[slots].view(len(instructions), -1, embeds.shape[-1])


def test_output_shape_follows_the_query_count(replace_system):
    system, processor = replace_system
    image = make_sample("vqa", np.random.default_rng(0), 64, 32).image
    assert processor.num_image_tokens == QUERIES  # <image> expands to M tokens, not one per patch
    tokens = _visual_tokens(system, processor, ["Count the circles.", "What colour is the star?"], image)
    assert tokens.shape == (2, QUERIES, system.model.llava.config.text_config.hidden_size)
    out = system.model(**{k: v for k, v in processor(["Count."], images=[[image]]).items()
                          if k in ("input_ids", "attention_mask", "pixel_values")})  # fmt: skip
    assert torch.isfinite(out.logits).all()


def test_visual_tokens_depend_on_the_instruction(replace_system):
    system, processor = replace_system
    image = make_sample("vqa", np.random.default_rng(0), 64, 32).image
    a, b, a2 = _visual_tokens(system, processor, ["Count the circles.", "Where is the red star?", "Count the circles."],
                              image)  # fmt: skip
    assert not torch.allclose(a, b, atol=1e-4)  # another instruction, other tokens for the same image
    assert torch.allclose(a, a2, atol=1e-5)  # the same instruction, the same tokens (batch-independent)


def test_answer_tokens_do_not_leak_into_the_visual_tokens(replace_system):
    system, processor = replace_system
    image = make_sample("vqa", np.random.default_rng(0), 64, 32).image
    model = system.model
    embeds = []
    for answer in ("three", "a blue star on the left"):
        batch = processor(["Count the circles."], images=[[image]], answers=[answer])
        with torch.no_grad():
            e = model.prepare_embeds(batch["input_ids"], batch["pixel_values"], labels=batch["labels"])
        embeds.append(e[batch["input_ids"] == model.token_ids.image])
    assert torch.allclose(embeds[0], embeds[1], atol=1e-5)


def test_add_mode_starts_as_the_plain_model(tiny_config):
    system, processor = _system(tiny_config, ImageTokenizerConfig(combine="add"))
    plain, _ = _system(tiny_config, None)
    plain.model.load_state_dict(system.model.state_dict(), strict=False)
    image = make_sample("vqa", np.random.default_rng(1), 64, 32).image
    with_tok = _visual_tokens(system, processor, ["Count the circles."], image)
    without = _visual_tokens(plain, processor, ["Count the circles."], image)
    assert torch.allclose(with_tok, without, atol=1e-6)  # the gate starts at zero
    with torch.no_grad():
        system.model.image_tokenizer.gate.fill_(0.5)
    assert not torch.allclose(_visual_tokens(system, processor, ["Count the circles."], image), without, atol=1e-4)


def test_training_reaches_the_tokenizer_and_save_load_keeps_it(replace_system, tmp_path):
    system, processor = replace_system
    rng = np.random.default_rng(3)
    samples = [make_sample(t, rng, 64, 32) for t in ("vqa", "native_grounding", "caption")]
    system.zero_grad(set_to_none=True)
    out = joint_loss(system, collate(processor, samples), decoders=False)
    out.total.backward()
    tok = system.model.image_tokenizer
    assert tok.queries.weight.grad.abs().sum() > 0 and tok.text_proj.weight.grad.abs().sum() > 0
    system.model.save_pretrained(tmp_path)
    loaded = SuperLinkModel.from_pretrained(tmp_path)
    assert loaded.config.image_tokenizer == system.model.config.image_tokenizer
    assert torch.equal(loaded.image_tokenizer.queries.weight, tok.queries.weight)


def test_add_mode_needs_one_query_per_patch(tiny_config):
    data = tiny_config.model.model_dump()
    data["image_tokenizer"] = {"num_queries": 5, "combine": "add"}
    with pytest.raises(ConfigError, match="one query per patch"):
        validate_mapping(data, MLLMConfig)
