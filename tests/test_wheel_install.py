"""`pip install .` works: the wheel carries the configs, the shipped checkpoint and the web page, and the
installed `superlink` runs the demo and the evaluation from a directory outside the checkout.

The wheel is installed with --no-deps into a fresh venv whose dependencies come from the running
environment (a .pth line naming its site-packages: nothing is downloaded, and the checkout's editable
install is not visible there, since only the venv's own .pth files are processed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from services.demo import DEMO_SCENES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "out", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".ruff_cache", "tests", "bench", "docs")  # fmt: skip


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    src, dist, venv, work = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    shutil.copytree(ROOT, src, ignore=SKIP)  # build from a clean copy: no build/ or egg-info left in the checkout
    offline = ["--no-build-isolation"] if _has("setuptools") else []  # build with the setuptools at hand
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, "-w", str(dist), str(src)], tmp_path, env)
    wheel = next(dist.glob("superlink-*.whl"))

    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip())
    (site / "_superlink_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
         tmp_path, env)  # fmt: skip
    work.mkdir()

    probe = """
import json, router, services.web
from fastapi.testclient import TestClient
from router.config import CONFIG_DIR, load_config
from router.pipeline import Pipeline
from router.assets import CHECKPOINT_ROOT
from services.http import create_app
pipe = Pipeline.from_pretrained("shapes")
page = TestClient(create_app(pipe)).get("/")
print(json.dumps({"router": router.__file__, "configs": str(CONFIG_DIR), "checkpoints": str(CHECKPOINT_ROOT),
                  "tiny": load_config("tiny").name, "model": type(pipe.system.model).__name__,
                  "page": page.status_code, "examples": len(list((services.web.STATIC_DIR / "examples").glob("*.png")))}))
"""
    found = json.loads(_run([str(python), "-c", probe], work, env).strip().splitlines()[-1])
    for key in ("router", "configs", "checkpoints"):
        assert found[key].startswith(str(site)), (key, found[key])  # the wheel's copy, not the checkout
    assert found["tiny"] == "tiny" and found["model"] == "SuperLinkModel"
    assert found["page"] == 200 and found["examples"] >= 3

    superlink = str(venv / "bin" / "superlink")
    demo = _run([superlink, "demo", "--out", str(work / "demo")], work, env)
    assert "trained checkpoint" in demo and str(site) in demo
    summary = json.loads((work / "demo" / "summary.json").read_text())
    assert summary["trained"] and summary["scenes"] == len(DEMO_SCENES) and all(Path(p).is_file() for p in summary["pngs"])

    scores = json.loads(_run([superlink, "eval", "--n", "11", "--json"], work, env).strip().splitlines()[-1])
    assert scores["n"] == 11 and scores["model"] == "shapes" and scores["routing_acc"] > 0.5


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
