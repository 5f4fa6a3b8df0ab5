#!/usr/bin/env bash
# Device kit: one call on a GPU machine (budget: 9 minutes) runs the GPU tests, then the real-scale benchmark.
#
#   bash bench/device.sh            # on the GPU machine, from the repository root
#   bash bench/device.sh --cpu      # the same steps in CPU mode (tiny preset), to check the kit anywhere
#
# Assumptions (the device machine has no internet and gets a copy of the working tree):
#   - it has its own python with a CUDA build of torch (checked below: torch.cuda.is_available());
#   - SuperLink's other dependencies are either installed there or carried as wheels: run bench/device_wheels.sh
#     here first and name ".whl" in the device call's carry (the H200 image lacks diffusers, pycocotools, pydantic);
#     the kit installs the project itself with `pip install -e . --no-deps` into a venv that sees the system's
#     site-packages (so the machine's CUDA torch is reused, never replaced), and only tries `pip install` for
#     the dependencies that fail to import (offline, that attempt fails fast and is reported);
#   - $OUT is where results must go (the device tool returns its files); defaults to bench/out.
# Steps and their time limits: pytest -m gpu (240 s; includes training.parallel fsdp under torchrun on one GPU
# with nccl), bench/realscale.py --json (300 s). Results:
#   $OUT/gpu_tests.txt, $OUT/realscale.json, $OUT/realscale.log; the JSON is also the last line printed.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
export OUT HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

PY="${PYTHON:-python3}"
if [ "$MODE" != "--cpu" ]; then
  if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "device.sh: $PY has no CUDA torch; this kit uses the machine's own CUDA build (see header)" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the working tree's packages, installed or not
source bench/device_wheels.sh --install   # diffusers, pycocotools, pydantic...: carried as .whl/ (bench/device_wheels.sh)
if "$PY" -c 'import torch, transformers, diffusers, peft, pytest' 2>/dev/null; then
  VPY="$PY"                                           # everything is there already: use it as it is
else
  VENV=.venv-device
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
  VPY="$VENV/bin/python"
  "$VPY" -m pip install -q -e . --no-deps 2>&1 | tail -2
fi
MISSING=$("$VPY" - <<'PY'
import importlib
mods = {"transformers": "transformers>=5", "diffusers": "diffusers>=0.35", "peft": "peft>=0.17",
        "safetensors": "safetensors", "pycocotools": "pycocotools", "scipy": "scipy", "pydantic": "pydantic>=2.6",
        "yaml": "pyyaml", "PIL": "pillow", "tokenizers": "tokenizers", "pytest": "pytest", "tqdm": "tqdm",
        "typer": "typer", "fastapi": "fastapi", "httpx": "httpx", "ray": "ray[serve]", "langchain_core": "langchain-core"}
out = []
for mod, req in mods.items():
    try:
        importlib.import_module(mod)
    except Exception:
        out.append(req)
print(" ".join(out))
PY
)
if [ -n "$MISSING" ]; then
  echo "device.sh: installing missing dependencies: $MISSING"
  "$VPY" -m pip install -q $MISSING 2>&1 | tail -3 || echo "device.sh: could not install $MISSING" >&2
fi
"$VPY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$OUT/device.txt"

if [ "$MODE" = "--cpu" ]; then
  GPU_TESTS=(tests/test_gpu.py)   # on a CPU they report skipped; the kit's plumbing is what is checked
  BENCH=(--cpu --repeats 1)
else
  GPU_TESTS=()
  BENCH=()
fi
timeout 240 "$VPY" -m pytest -q -m gpu -p no:cacheprovider "${GPU_TESTS[@]}" 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
echo "pytest -m gpu exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_tests.txt"
timeout 300 "$VPY" bench/realscale.py --json "${BENCH[@]}" > "$OUT/realscale.log" 2>&1
echo "realscale exit: $?"
tail -n 40 "$OUT/realscale.log" | grep -v '^{' || true
tail -n 1 "$OUT/realscale.log"
