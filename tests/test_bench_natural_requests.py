"""bench/natural_requests.py: requests written by hand (not drawn from the instruction grammar), scored by the
routes fired."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shapesworld.tasks import TEMPLATES

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("natural_requests", ROOT / "bench" / "natural_requests.py")
natural_requests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(natural_requests)
FLOOR = 0.90  # the shipped checkpoint scores 1.000 (48 of 48); the ones before it 0.833 (40) and 0.583 (28)


def test_requests_name_known_routes_and_are_not_templates():
    groups = {"det": {"DET"}, "seg": {"SEG"}, "grd": {"GRD"}, "pose": {"POSE"}, "text": set(), "gen": {"GEN"},
              "edit": {"EDIT"}}
    templates = {t.lower().rstrip(".?!") for ts in TEMPLATES.values() for t in ts}
    every = natural_requests.SETS["all"]
    assert len(every) == sum(len(v) for k, v in natural_requests.SETS.items() if k != "all")
    for group, want, text in every:
        assert set(want) <= {"DET", "SEG", "GRD", "POSE", "GEN", "EDIT"}, text
        assert group == "compound" and len(want) > 1 or set(want) == groups[group], text
        assert text.lower().rstrip(".?!") not in templates, text
    assert len({text.lower().rstrip(".?!") for _, _, text in every}) == len(every)  # no request in two sets


@pytest.mark.skipif(not (ROOT / "checkpoints" / "shapes" / "superlink.yaml").is_file(), reason="no shipped checkpoint")
def test_the_shipped_model_routes_plain_requests():
    done = subprocess.run([sys.executable, "bench/natural_requests.py", "--model", "checkpoints/shapes", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == len(natural_requests.REQUESTS)
    assert set(result["routing_by_group"]) == {g for g, _, _ in natural_requests.REQUESTS}
    assert len(result["failures"]) == round((1 - result["routing_acc"]) * result["n"])
    assert result["routing_acc"] >= FLOOR, result["failures"]
