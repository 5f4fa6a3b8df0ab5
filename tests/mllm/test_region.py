"""RegionEncoder: mask pooling over the patch grid, and the <region> splice in the model."""

import pytest
import torch

from mllm.modeling import ModelInputError, SuperLinkModel
from mllm.region import RegionEncoder, RegionError
from mllm.tokenizer import build_tokenizer
from mllm.vocab import Vocabulary

CORPUS = ["what is in the region? a red circle", "describe the blue square on the left"] * 5


@pytest.fixture(scope="module")
def model(tiny_config):
    cfg = tiny_config.model
    tok = build_tokenizer(CORPUS, Vocabulary.from_config(cfg), cfg.text.tokenizer_vocab_size)
    torch.manual_seed(0)
    return SuperLinkModel(cfg, tok).eval()


def box_mask(side: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(side, side)
    m[y0:y1, x0:x1] = 1
    return m


def test_weights_cover_patches_by_area():
    # 32x32 masks on a 4x4 patch grid: each patch is 8x8 pixels.
    masks = torch.stack([
        box_mask(32, 0, 8, 8, 16),  # exactly patch (row 0, col 1)
        box_mask(32, 18, 20, 26, 27),  # 2 pixels inside patch (2, 3): smaller than a patch
        box_mask(32, 0, 8, 4, 12),  # half of patch (0, 0), half of (0, 1)
    ])  # fmt: skip
    w = RegionEncoder.patch_weights(masks, 16)
    assert w.shape == (3, 16)
    assert torch.allclose(w.sum(-1), torch.ones(3))
    assert w[0].nonzero().flatten().tolist() == [1]
    assert w[1].nonzero().flatten().tolist() == [2 * 4 + 3]
    assert w[2, 0].item() == pytest.approx(0.5) and w[2, 1].item() == pytest.approx(0.5)


def test_empty_or_misshapen_masks_raise():
    with pytest.raises(RegionError, match=r"region masks \[1\] are empty"):
        RegionEncoder.patch_weights(torch.stack([box_mask(32, 0, 4, 0, 4), torch.zeros(32, 32)]), 16)
    with pytest.raises(RegionError, match="not a multiple"):
        RegionEncoder.patch_weights(torch.ones(1, 30, 30), 16)
    with pytest.raises(RegionError, match=r"\(N_reg, S, S\)"):
        RegionEncoder.patch_weights(torch.ones(32, 32), 16)


def test_encoder_pools_the_covered_patches_then_projects():
    torch.manual_seed(0)
    enc = RegionEncoder(vision_dim=8, llm_dim=12)
    feats = torch.randn(2, 16, 8)  # two images
    masks = torch.stack([box_mask(32, 0, 8, 0, 16), box_mask(32, 24, 32, 24, 32)])
    out = enc(feats, masks, torch.tensor([1, 0]))
    expected = torch.stack([(feats[1, 0] + feats[1, 1]) / 2, feats[0, 15]])
    assert torch.allclose(out, enc.mlp(expected), atol=1e-6)
    with pytest.raises(RegionError, match="out of range for 2 images"):
        enc(feats, masks, torch.tensor([0, 2]))
    with pytest.raises(RegionError, match="to match region_masks"):
        enc(feats, masks, torch.tensor([0]))


def test_region_token_embedding_is_replaced_in_order(model):
    tok = model.tokenizer
    texts = ["<image>" * 16 + " what is <region>?", "<image>" * 16 + " <region> and <region>?"]
    batch = tok(texts, return_tensors="pt", padding=True)
    pixels = torch.randn(2, 3, 32, 32)
    masks = torch.stack([box_mask(32, 0, 8, 0, 8), box_mask(32, 8, 32, 0, 32), box_mask(32, 0, 4, 28, 32)])
    index = torch.tensor([0, 1, 1])
    embeds = model.prepare_embeds(batch["input_ids"], pixels, masks, index)
    patches, _ = model.encode_images(pixels)
    expected = model.region_encoder(patches, masks, index)
    slots = batch["input_ids"] == model.token_ids.region
    assert torch.allclose(embeds[slots], expected, atol=1e-6)
    swapped = model.prepare_embeds(batch["input_ids"], pixels, masks, torch.tensor([1, 1, 1]))
    assert not torch.allclose(swapped[slots][0], embeds[slots][0])  # the first region now reads image 1


def test_region_count_and_inputs_are_checked(model):
    batch = model.tokenizer(["<image>" * 16 + " <region> <region>"], return_tensors="pt")
    pixels = torch.randn(1, 3, 32, 32)
    one = box_mask(32, 0, 8, 0, 8)[None]
    with pytest.raises(ModelInputError, match="2 <region> tokens but 1 region masks"):
        model(**batch, pixel_values=pixels, region_masks=one, region_image_index=torch.tensor([0]))
    with pytest.raises(ModelInputError, match="no region_masks"):
        model(**batch, pixel_values=pixels)
    text_only = model.tokenizer(["<region>"], return_tensors="pt")
    with pytest.raises(ModelInputError, match="need pixel_values"):
        model(**text_only, region_masks=one, region_image_index=torch.tensor([0]))
