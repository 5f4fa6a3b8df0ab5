"""bench/frozen_links.py: a fresh decoder on frozen link states, with and without the phrase row."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("frozen_links", ROOT / "bench" / "frozen_links.py")
frozen_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frozen_links)


def test_conditioning_appends_or_replaces_by_the_phrase_row():
    states, rows = torch.randn(3, 4, 8), torch.randn(3, 1, 8)
    assert frozen_links.conditioning("states", states, rows) is states
    both = frozen_links.conditioning("states+phrase", states, rows)
    assert both.shape == (3, 5, 8) and torch.equal(both[:, 4:], rows) and torch.equal(both[:, :4], states)
    assert torch.equal(frozen_links.conditioning("phrase", states, rows), rows)


def test_phrase_rows_are_the_mean_token_embedding():
    from router.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("tiny")
    rows = frozen_links.PhraseRows(pipe.system.model)
    out = rows(["red circle", "circle"])
    tok = pipe.system.model.tokenizer
    weight = pipe.system.model.llava.get_input_embeddings().weight
    ids = tok("red circle", add_special_tokens=False).input_ids
    assert out.shape == (2, 1, weight.shape[1])
    assert torch.allclose(out[0, 0], weight[torch.tensor(ids)].mean(0).detach())
    assert not torch.allclose(out[0], out[1])
    pipe.close()


def test_runs_on_the_tiny_model_and_scores_both_ways():
    cmd = [sys.executable, "bench/frozen_links.py", "--model", "tiny", "--link", "states+phrase", "--steps", "3",
           "--scenes", "3", "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["route"] == "DET" and result["steps"] == 3 and result["loss_last100"] > 0
    assert set(result["generated"]) == set(result["forced"]) == {"det_ap", "det_ap50", "det_ap_agnostic", "phrase_acc"}
    assert result["forced"]["phrase_acc"] == 1.0  # teacher forcing writes the reference phrases
