"""bench/image_links.py: alignment of the [GEN] / [EDIT] links to the frozen text encoder's descriptions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("image_links", ROOT / "bench" / "image_links.py")
image_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_links)


def test_alignment_is_perfect_for_the_descriptions_themselves_and_near_chance_for_noise():
    torch.manual_seed(0)
    text = torch.randn(16, 8, 32)
    exact = image_links.alignment(text.clone(), text)
    assert exact == {"rel_mse": 0.0, "cosine": pytest.approx(1.0), "retrieval": 1.0}
    noise = image_links.alignment(torch.randn(16, 8, 32), text)
    assert noise["rel_mse"] > 1.5 and abs(noise["cosine"]) < 0.1 and noise["retrieval"] <= 0.25
    shuffled = image_links.alignment(text[torch.roll(torch.arange(16), 1)], text)  # every link says another request
    assert shuffled["retrieval"] == 0.0
    near = image_links.alignment(text + 0.3 * torch.randn_like(text), text)
    assert near["retrieval"] == 1.0 and 0.05 < near["rel_mse"] < 0.15
    with pytest.raises(ValueError, match="expected two"):
        image_links.alignment(text, text[:, :4])


@pytest.mark.skipif(not (ROOT / "checkpoints" / "shapes" / "superlink.yaml").is_file(), reason="no shipped checkpoint")
def test_measures_the_shipped_image_links(capsys):
    result = image_links.main(["--routes", "gen", "--samples", "16", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert 0.0 <= result["GEN/retrieval"] <= 1.0 and result["GEN/rel_mse"] > 0.0
    with pytest.raises(SystemExit):
        image_links.main(["--routes", "DET"])
