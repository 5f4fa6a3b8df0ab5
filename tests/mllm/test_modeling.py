"""SuperLinkModel: splice/gather of super-link queries, image scatter, LM loss, LoRA."""

import pytest
import torch
import torch.nn.functional as F

from mllm.config import LoraConfig
from mllm.lora import apply_lora
from mllm.modeling import IGNORE_INDEX, ModelInputError, SuperLinkModel, positions_from_mask
from mllm.tokenizer import build_tokenizer
from mllm.vocab import Vocabulary

CORPUS = [
    "detect the red circle and the blue square",
    "where is the green star? it is on the left",
    "a small yellow triangle next to a big purple hexagon",
] * 5


@pytest.fixture(scope="module")
def cfg(tiny_config):
    return tiny_config.model


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return build_tokenizer(CORPUS, Vocabulary.from_config(cfg), cfg.text.tokenizer_vocab_size)


@pytest.fixture(scope="module")
def model(cfg, tokenizer):
    torch.manual_seed(0)
    return SuperLinkModel(cfg, tokenizer).eval()


def routed(route: str, q: int) -> str:
    return f"[{route}]" + f"[{route}_Q]" * q


def encode(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_builds_tiny_model_with_one_query_table_per_route(model, cfg, tokenizer):
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 400_000
    assert model.llava.get_input_embeddings().num_embeddings == len(tokenizer)
    assert {k: v.weight.shape for k, v in model.queries.items()} == {
        name: (q, cfg.text.hidden_size) for name, q in cfg.routes.items()
    }


def test_scatter_fills_each_placeholder_run_with_the_route_table(model, tokenizer):
    texts = [
        "a " + routed("DET", 4) + " b " + routed("GEN", 8),
        routed("DET", 4) + " and " + routed("DET", 4),
    ]
    batch = encode(tokenizer, texts)
    ids = batch["input_ids"]
    plain = model.embed_inputs(ids)
    spliced = model.scatter_route_queries(plain, ids)
    det_slots = ids == model.token_ids.placeholder["DET"]
    gen_slots = ids == model.token_ids.placeholder["GEN"]
    assert torch.equal(
        spliced[det_slots], model.queries["DET"].weight.repeat(3, 1)
    )  # 3 DET groups, rows in order
    assert torch.equal(spliced[gen_slots], model.queries["GEN"].weight)
    untouched = ~(det_slots | gen_slots)
    assert torch.equal(spliced[untouched], plain[untouched])


@pytest.mark.parametrize(
    "text, message",
    [
        ("[DET]" + "[DET_Q]" * 3, "not a multiple"),
        ("a" + "[DET_Q]" * 4, "right after"),
        ("[DET]" + "[DET_Q]" * 8, "runs of exactly 4"),
        ("[DET]" + "[DET_Q]" * 2 + " x " + "[DET_Q]" * 2, "right after"),
    ],
)
def test_malformed_placeholder_runs_raise(model, tokenizer, text, message):
    batch = encode(tokenizer, [text])
    with pytest.raises(ModelInputError, match=message):
        model(**batch)


def test_link_states_index_and_rows_independent_of_batching(model, tokenizer):
    texts = [
        "the red circle " + routed("DET", 4) + " done",
        routed("GEN", 8) + " and the star " + routed("DET", 4),
    ]
    batch = encode(tokenizer, texts)
    out = model(**batch)
    ids = batch["input_ids"]
    det_pos = (ids == model.token_ids.route["DET"]).nonzero().tolist()
    assert out.link_states["DET"].index.tolist() == det_pos  # (row, position of [DET])
    assert out.link_states["DET"].states.shape == (2, 4, 64)
    assert out.link_states["GEN"].states.shape == (1, 8, 64)
    assert set(out.link_states) == {"DET", "GEN"}
    for row, text in enumerate(texts):  # each row alone, unpadded
        alone = model(**encode(tokenizer, [text]))
        n = alone.logits.shape[1]
        assert torch.allclose(alone.logits[0], out.logits[row, -n:], atol=1e-5)
        mine = out.link_states["DET"].index[:, 0] == row
        assert torch.allclose(alone.link_states["DET"].states, out.link_states["DET"].states[mine], atol=1e-5)


def test_matches_llava_forward_on_images_and_text(model, tokenizer):
    texts = ["<image>" * 16 + " where is the star?", "<image>" * 16 + " hi"]
    batch = encode(tokenizer, texts)
    pixels = images(2)
    ours = model(**batch, pixel_values=pixels).logits
    ref = model.llava(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=positions_from_mask(batch["attention_mask"]),
        pixel_values=pixels,
    ).logits
    assert torch.allclose(ours, ref, atol=1e-5)
    other = model(**batch, pixel_values=images(2, seed=1)).logits
    assert not torch.allclose(ours[:, -1], other[:, -1], atol=1e-4)  # the image reaches the answer


def test_image_token_count_must_match_features(model, tokenizer):
    batch = encode(tokenizer, ["<image>" * 15 + " hi"])
    with pytest.raises(ModelInputError, match="15 <image> tokens but 1 images give 16 features"):
        model(**batch, pixel_values=images(1))
    with pytest.raises(ModelInputError, match="no pixel_values"):
        model(**batch)


def test_lm_loss_is_shifted_cross_entropy_ignoring_masked_labels(model, tokenizer):
    batch = encode(tokenizer, ["where is the red circle " + routed("DET", 4) + "</s>", "hi there</s>"])
    ids = batch["input_ids"]
    labels = ids.clone()
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    labels[ids == model.token_ids.placeholder["DET"]] = IGNORE_INDEX
    labels[:, :3] = IGNORE_INDEX
    out = model(**batch, labels=labels)
    logp = F.log_softmax(out.logits.double(), -1)
    terms = [
        -logp[b, t - 1, labels[b, t]]
        for b in range(ids.shape[0])
        for t in range(1, ids.shape[1])
        if labels[b, t] != IGNORE_INDEX
    ]
    assert out.loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_decoder_gradients_reach_the_used_query_table_only(cfg, tokenizer):
    torch.manual_seed(0)
    model = SuperLinkModel(cfg, tokenizer)
    out = model(**encode(tokenizer, ["find " + routed("SEG", 4)]))
    out.link_states["SEG"].states.pow(2).sum().backward()
    assert model.queries["SEG"].weight.grad.abs().sum() > 0
    assert model.queries["DET"].weight.grad is None


# ----- LoRA --------------------------------------------------------------------------------------


def lora_batch(model, tokenizer):
    """Every route, an image, a region and answer tokens among SuperLink's own, so every trainable part is used."""
    answer = (
        " ".join(routed(name, q) for name, q in model.config.routes.items()) + "<cls_0><loc_1><loc_2></s>"
    )
    batch = encode(tokenizer, ["<image>" * 16 + " what is <region>? " + answer])
    labels = batch["input_ids"].clone()
    for ph in model.token_ids.placeholder.values():
        labels[labels == ph] = IGNORE_INDEX
    mask = torch.zeros(1, 32, 32)
    mask[0, 4:20, 8:24] = 1
    extra = {"pixel_values": images(1), "region_masks": mask, "region_image_index": torch.tensor([0])}
    return {**batch, **extra, "labels": labels}


def expected_trainable(model, r: int) -> int:
    """LoRA on q/k/v/o of every LLM layer + queries + projector + region encoder + new embedding/head rows."""
    text = model.llava.config.text_config
    d, kv = text.hidden_size, text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    lora = text.num_hidden_layers * r * ((d + d) + (d + kv) + (d + kv) + (d + d))
    queries = sum(q * d for q in model.config.routes.values())
    projector = sum(p.numel() for p in model.llava.model.multi_modal_projector.parameters())
    region = sum(p.numel() for p in model.region_encoder.parameters())
    n_new = (
        2 + 2 * len(model.config.routes) + model.config.vocab.class_slots + model.config.vocab.location_bins
    )
    return lora + queries + projector + region + 2 * n_new * d


def test_lora_trains_exactly_adapters_queries_projector_region_and_new_rows(cfg, tokenizer):
    torch.manual_seed(0)
    model = SuperLinkModel(cfg, tokenizer)
    expected = expected_trainable(model, r=4)
    apply_lora(model, LoraConfig(r=4, alpha=8))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected
    assert not any("vision_tower" in n for n in trainable)
    assert model.config.lora.r == 4
    with pytest.raises(RuntimeError, match="already applied"):
        apply_lora(model)


def test_lora_steps_change_only_trainable_parameters(cfg, tokenizer):
    torch.manual_seed(0)
    model = SuperLinkModel(cfg, tokenizer)
    apply_lora(model)
    batch = lora_batch(model, tokenizer)
    old_ids = torch.arange(min(model.new_token_ids))
    old_rows = model.llava.get_input_embeddings()(old_ids).detach().clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # lora_B starts at zero, so lora_A first moves on the second step
        out = model(**batch)
        loss = out.loss + sum(ls.states.pow(2).mean() for ls in out.link_states.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    assert torch.equal(model.llava.get_input_embeddings()(old_ids), old_rows)  # base vocabulary rows frozen


def _scaled_tower(model: SuperLinkModel, factor: float):
    """Multiply every hidden state the vision tower returns by `factor` (a residual stream grown in training)."""

    def hook(_module, _inputs, output):
        output.hidden_states = tuple(None if h is None else h * factor for h in output.hidden_states)
        return output

    return model.llava.model.vision_tower.register_forward_hook(hook)


@pytest.mark.parametrize("norm", [True, False])
def test_projector_norm_makes_image_tokens_independent_of_the_towers_scale(cfg, tokenizer, norm):
    torch.manual_seed(0)
    model = SuperLinkModel(cfg.model_copy(update={"projector_norm": norm}), tokenizer).eval()
    assert (model.projector_norm is not None) == norm
    pixels = images(2)
    with torch.no_grad():
        patches, base = model.encode_images(pixels)
        handle = _scaled_tower(model, 100.0)
        try:
            grown_patches, grown = model.encode_images(pixels)
        finally:
            handle.remove()
    assert torch.allclose(grown_patches, 100.0 * patches, rtol=1e-4)  # the tower's output did grow, on either path
    if norm:  # LayerNorm -> projector: the same image tokens whatever the tower's scale
        assert torch.allclose(grown, base, atol=1e-4)
    else:  # LLaVA's layout: the image tokens grow with the tower (the 9 300-step `shapes` tower reached ~870)
        assert grown.norm(dim=-1).mean() > 10 * base.norm(dim=-1).mean()


def test_projector_norm_trains_with_the_image_tokens(cfg, tokenizer):
    torch.manual_seed(0)
    model = SuperLinkModel(cfg.model_copy(update={"projector_norm": True}), tokenizer)
    _, projected = model.encode_images(images(2))
    projected.square().mean().backward()
    assert model.projector_norm.weight.grad.abs().sum() > 0
    vision = [p for n, p in model.named_parameters() if ".vision_tower." in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision)
