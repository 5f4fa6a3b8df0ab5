"""save_pretrained / from_pretrained round trips, and loading a plain LLaVA-format checkpoint."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from mllm.config import LoraConfig
from mllm.modeling import CONFIG_FILE, SuperLinkModel, positions_from_mask
from mllm.tokenizer import build_tokenizer
from mllm.vocab import Vocabulary

CORPUS = ["detect the red circle and the blue square", "where is the green star?"] * 5


@pytest.fixture(scope="module")
def cfg(tiny_config):
    return tiny_config.model


def superlink_batch(model):
    text = "<image>" * 16 + " what is <region>? the circle [DET]" + "[DET_Q]" * 4 + " [GEN]" + "[GEN_Q]" * 8
    batch = model.tokenizer([text, "hello"], return_tensors="pt", padding=True)
    mask = torch.zeros(1, 32, 32)
    mask[0, :16, :16] = 1
    g = torch.Generator().manual_seed(0)
    return {**batch, "pixel_values": torch.randn(1, 3, 32, 32, generator=g), "region_masks": mask,
            "region_image_index": torch.tensor([0])}  # fmt: skip


def assert_same_outputs(a: SuperLinkModel, b: SuperLinkModel) -> None:
    batch = superlink_batch(a)
    out_a, out_b = a(**batch), b(**batch)
    assert torch.equal(out_a.logits, out_b.logits)
    assert out_a.link_states.keys() == out_b.link_states.keys() == {"DET", "GEN"}
    for route in out_a.link_states:
        assert torch.equal(out_a.link_states[route].states, out_b.link_states[route].states)


@pytest.mark.parametrize("lora,tied", [(False, False), (True, False), (False, True)], ids=["full", "lora", "tied"])
def test_round_trip_gives_identical_outputs(cfg, tmp_path, lora, tied):
    tok = build_tokenizer(CORPUS, Vocabulary.from_config(cfg), cfg.text.tokenizer_vocab_size)
    torch.manual_seed(0)
    text = cfg.text.model_copy(update={"tie_word_embeddings": tied})
    model = SuperLinkModel(cfg.model_copy(update={"lora": LoraConfig(r=2) if lora else None, "text": text}), tok).eval()
    llava = model.llava
    assert (llava.lm_head.weight.data_ptr() == llava.get_input_embeddings().weight.data_ptr()) is tied
    with torch.no_grad():  # perturb every parameter so zero-initialised LoRA B and token deltas count too
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", CONFIG_FILE, "llava_config.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)  # nothing to unpickle
    loaded = SuperLinkModel.from_pretrained(tmp_path).eval()
    assert (loaded.config.lora is not None) == lora
    out_w, in_w = loaded.llava.lm_head.weight, loaded.llava.get_input_embeddings().weight
    assert (out_w.data_ptr() == in_w.data_ptr()) is tied  # still one matrix after loading
    assert loaded.tokenizer.get_vocab() == tok.get_vocab()
    assert_same_outputs(model, loaded)


def test_from_pretrained_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors missing"):
        SuperLinkModel.from_pretrained(tmp_path)


def plain_tokenizer() -> PreTrainedTokenizerFast:
    """A LLaVA-style tokenizer: BPE + <s>, </s>, <image>, and none of SuperLink's tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet, show_progress=False)
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    fast.add_tokens(["<image>"], special_tokens=True)
    return fast


@pytest.fixture
def llava_dir(tmp_path):
    tok = plain_tokenizer()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,  # LLaVA-1.5's choice, unlike the tiny preset
    )  # fmt: skip
    torch.manual_seed(1)
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    return tmp_path / "llava"


def test_from_llava_keeps_weights_and_adds_tokens_and_queries(cfg, llava_dir, tmp_path):
    original = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    n_old = original.get_input_embeddings().num_embeddings
    model = SuperLinkModel.from_llava(llava_dir, cfg).eval()
    new_state = model.llava.state_dict()
    for key, value in original.state_dict().items():
        if "embed_tokens" in key or "lm_head" in key:
            assert torch.equal(new_state[key][:n_old], value), key
        else:
            assert torch.equal(new_state[key], value), key
    emb = model.llava.get_input_embeddings().weight
    vocab = Vocabulary.from_config(cfg)
    assert (
        emb.shape[0] == len(model.tokenizer) == n_old + len(vocab.special_tokens) - 3
    )  # <s> </s> <image> known
    assert torch.allclose(emb[n_old:], emb[:n_old].mean(0).expand(emb.shape[0] - n_old, -1), atol=1e-3)
    assert model.tokenizer.convert_tokens_to_ids("<image>") == original.config.image_token_id
    assert set(model.queries) == set(cfg.routes)
    assert model.config.pretrained == str(llava_dir)
    # Same backbone computation on a plain image prompt (vision layer -2 honoured).
    batch = model.tokenizer(["<image>" * 16 + " where is the star?"], return_tensors="pt")
    pixels = torch.randn(1, 3, 32, 32)
    ref = original(
        **batch, pixel_values=pixels, position_ids=positions_from_mask(batch["attention_mask"])
    ).logits
    assert torch.allclose(model(**batch, pixel_values=pixels).logits[..., :n_old], ref, atol=1e-5)
    # And the converted model round-trips through SuperLink's own format.
    model.save_pretrained(tmp_path / "superlink")
    assert_same_outputs(model, SuperLinkModel.from_pretrained(tmp_path / "superlink").eval())
