"""Growing token embeddings at the mean, spare checkpoint rows, folder errors, and low-memory loading."""

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from mllm.embeddings import grow_token_embeddings, load_weights
from mllm.modeling import SuperLinkModel
from mllm.tokenizer import build_tokenizer
from mllm.vocab import Vocabulary
from tests.mllm.test_save_load import CORPUS, plain_tokenizer


def small_llava(vocab: int, tied: bool = False) -> LlavaForConditionalGeneration:
    return LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=128, tie_word_embeddings=tied),
        image_token_id=1, tie_word_embeddings=tied,
    ))  # fmt: skip


@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_are_the_mean_of_the_known_rows(tied):
    torch.manual_seed(0)
    llava = small_llava(40, tied)
    emb = llava.get_input_embeddings().weight.detach().clone()
    head = llava.get_output_embeddings().weight.detach().clone()
    assert grow_token_embeddings(llava, 50, known_tokens=30) == 10
    new_emb, new_head = llava.get_input_embeddings().weight, llava.get_output_embeddings().weight
    assert new_emb.shape == (50, 64) and new_head.shape == (50, 64)
    assert torch.equal(new_emb[:40], emb)  # old rows, spare ones included, untouched
    assert torch.allclose(new_emb[40:], emb[:30].mean(0).expand(10, -1))
    assert torch.allclose(new_head[40:], head[:30].mean(0).expand(10, -1))
    assert (new_head.data_ptr() == new_emb.data_ptr()) == tied
    assert llava.config.text_config.vocab_size == 50


def test_growing_never_shrinks_and_spare_rows_need_no_resize():
    llava = small_llava(64)
    assert grow_token_embeddings(llava, 60) == 0
    assert llava.get_input_embeddings().weight.shape[0] == 64


def test_default_mean_resizing_is_not_used(monkeypatch):
    """transformers' covariance sampling is what took minutes at 4096 wide; it must never run."""
    import transformers.modeling_utils as mu

    def boom(*args, **kwargs):
        raise AssertionError("multivariate-normal mean resizing ran")

    monkeypatch.setattr(mu.PreTrainedModel, "_init_added_embeddings_weights_with_mean", boom)
    monkeypatch.setattr(mu.PreTrainedModel, "_init_added_lm_head_weights_with_mean", boom)
    llava = small_llava(40)
    grow_token_embeddings(llava, 80)
    assert llava.get_input_embeddings().weight.shape[0] == 80


def test_checkpoint_with_spare_rows_gives_them_to_superlink_tokens(tiny_config, tmp_path):
    """LLaVA-1.5 stores more embedding rows than tokenizer entries; SuperLink's first tokens take them."""
    tok = plain_tokenizer()
    spare = 5
    torch.manual_seed(2)
    llava = small_llava(len(tok) + spare)
    llava.config.image_token_id = tok.convert_tokens_to_ids("<image>")
    llava.save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    old = llava.get_input_embeddings().weight.detach().clone()
    model = SuperLinkModel.from_llava(tmp_path / "llava", tiny_config.model)
    emb = model.llava.get_input_embeddings().weight
    n = len(tok) + spare
    assert torch.equal(emb[:n], old)  # the spare rows are kept for the first new tokens
    assert torch.allclose(emb[n:], old[: len(tok)].mean(0).expand(emb.shape[0] - n, -1), atol=1e-6)
    new_id = model.tokenizer.convert_tokens_to_ids(Vocabulary.from_config(tiny_config.model).routes[0].token)
    assert new_id < emb.shape[0]


@pytest.mark.parametrize("where", ["missing/llava", "/nonexistent/llava"])
def test_missing_pretrained_folder_is_a_clear_error(tiny_config, where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config.model.model_copy(update={"pretrained": where})
    with pytest.raises(FileNotFoundError, match="folder not found: " + where):
        SuperLinkModel.from_llava(where, cfg)


def test_saved_model_loads_in_its_dtype_without_float32_copy(tiny_config, tmp_path, monkeypatch):
    tiny_tokenizer = build_tokenizer(CORPUS, Vocabulary.from_config(tiny_config.model))
    cfg = tiny_config.model.model_copy(update={"dtype": "bfloat16"})
    torch.manual_seed(3)
    model = SuperLinkModel(cfg, tiny_tokenizer)
    model.save_pretrained(tmp_path)
    made = []
    real = torch.nn.Linear.__init__

    def spy(self, *a, **k):  # record the dtype every Linear is created in
        real(self, *a, **k)
        made.append(self.weight.dtype)

    monkeypatch.setattr(torch.nn.Linear, "__init__", spy)
    loaded = SuperLinkModel.from_pretrained(tmp_path)
    assert made and set(made) == {torch.bfloat16}
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_load_weights_is_strict(tmp_path):
    lin = torch.nn.Linear(3, 2)
    save_file({"weight": torch.zeros(2, 3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(KeyError, match="missing.*bias"):
        load_weights(lin, tmp_path / "w.safetensors")
    save_file({"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(KeyError, match="no place"):
        load_weights(lin, tmp_path / "w.safetensors")
    save_file({"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="shape"):
        load_weights(lin, tmp_path / "w.safetensors")
