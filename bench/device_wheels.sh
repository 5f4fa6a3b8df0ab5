#!/usr/bin/env bash
# Prepare, on this machine, the wheels the device machine lacks, for training/train_device.sh and bench/ scripts.
#
#     bash bench/device_wheels.sh            # writes .whl/ (git-ignored); name ".whl" in the device call's carry
#
# The device machine (an NVIDIA image with Python 3.12, a CUDA torch, transformers, peft, safetensors, scipy,
# typer, tqdm, pyyaml, pillow) has no network; SuperLink's training and evaluation also need diffusers,
# pycocotools and pydantic, and the transformers version this project is tested with. pip downloads them
# here as cp312 manylinux wheels (about 23 MB); a device command installs them with
#     source bench/device_wheels.sh --install     (installs .whl/*.whl into /tmp/site, puts it on PYTHONPATH)
if [ "${1:-}" = "--install" ]; then  # on the device machine, sourced by training/train_device.sh and bench/device.sh
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    return 0 2>/dev/null || exit 0
fi
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
py=$(command -v python3)
version() { "$py" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
pkgs=()
for name in transformers diffusers pycocotools pydantic pydantic_core annotated-types typing-inspection; do
    v=$(version "$name")
    pkgs+=("$name${v:+==$v}")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pkgs[@]}"
ls -1 .whl
du -sh .whl
