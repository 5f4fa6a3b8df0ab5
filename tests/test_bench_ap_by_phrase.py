"""bench/ap_by_phrase.py: splitting routed AP by coloured and plain phrases."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.suite import Scored, eval_samples

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ap_by_phrase", ROOT / "bench" / "ap_by_phrase.py")
ap_by_phrase = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ap_by_phrase)


def test_restrict_keeps_only_the_accepted_phrases_and_drops_emptied_samples():
    scored = [Scored(f, s, None) for f, s in eval_samples("val", 40, 0, families=("detection",))]
    phrases = [t.phrase for s in scored for t in s.sample.targets]
    assert any(len(p.split()) > 1 for p in phrases) and any(len(p.split()) == 1 for p in phrases)
    colour = ap_by_phrase.restrict(scored, ap_by_phrase.SPLITS["colour"])
    plain = ap_by_phrase.restrict(scored, ap_by_phrase.SPLITS["plain"])
    assert all(len(t.phrase.split()) > 1 for s in colour for t in s.sample.targets)
    assert all(len(t.phrase.split()) == 1 for s in plain for t in s.sample.targets)
    assert sum(len(s.sample.targets) for s in colour + plain) == len(phrases)
    assert len(ap_by_phrase.restrict(scored, ap_by_phrase.SPLITS["all"])) == len(scored)
    assert all(len(s.sample.targets) for s in colour + plain)
    # the originals are untouched
    assert [t.phrase for s in scored for t in s.sample.targets] == phrases


@pytest.mark.skipif(not (ROOT / "checkpoints" / "shapes" / "superlink.yaml").is_file(), reason="no shipped checkpoint")
def test_splits_the_shipped_models_detection_ap():
    cmd = [sys.executable, "bench/ap_by_phrase.py", "--model", "checkpoints/shapes", "--scenes", "12", "--routes", "det",
           "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(k for k in result if "." in k) == {"DET.all", "DET.colour", "DET.plain"}
    assert result["DET.all"]["scenes"] == 12
    assert result["DET.colour"]["scenes"] + result["DET.plain"]["scenes"] >= 12
    assert 0.0 < result["DET.all"]["ap"] <= 1.0  # the shipped model finds shapes


def test_unknown_route_is_refused():
    done = subprocess.run([sys.executable, "bench/ap_by_phrase.py", "--routes", "GEN"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "accepted: DET, SEG, POSE" in done.stderr
