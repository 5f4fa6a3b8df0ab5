"""bench/link_probe.py: the phrase share of link vectors and the linear probe, on known data and the shipped model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("link_probe", ROOT / "bench" / "link_probe.py")
link_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(link_probe)


def test_phrase_r2_is_one_for_vectors_that_only_say_the_phrase_and_small_for_noise():
    torch.manual_seed(0)
    labels = [f"p{i % 5}" for i in range(200)]
    centres = torch.randn(5, 16)
    exact = torch.stack([centres[int(p[1])] for p in labels])
    assert link_probe.phrase_r2(exact, labels) == pytest.approx(1.0)
    assert link_probe.phrase_r2(torch.randn(200, 16), labels) < 0.1
    noisy = exact + 0.5 * torch.randn(200, 16)
    assert 0.5 < link_probe.phrase_r2(noisy, labels) < 0.95


def test_probe_reads_a_linearly_coded_phrase_and_not_a_missing_one():
    torch.manual_seed(0)
    labels = [f"p{i % 4}" for i in range(400)]
    coded = torch.randn(400, 8)
    coded[torch.arange(400), torch.tensor([int(p[1]) for p in labels])] += 4.0  # one direction per phrase
    assert link_probe.probe(coded, labels) > 0.95
    assert link_probe.probe(torch.randn(400, 8), labels) < 0.5


@pytest.mark.skipif(not (ROOT / "checkpoints" / "shapes" / "superlink.yaml").is_file(), reason="no shipped checkpoint")
def test_measures_the_shipped_detection_links():
    result = link_probe.measure(ROOT / "checkpoints" / "shapes", "DET", 48)
    assert result["vectors"] >= 48 and result["phrases"] > 5
    for kind in ("states", "projected"):
        assert 0.0 < result[f"{kind}/phrase_r2"] <= 1.0
        assert 0.0 <= result[f"{kind}/probe_acc_kind"] <= 1.0
