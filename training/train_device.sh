#!/usr/bin/env bash
# Train the embedded `shapes` recipe on the device machine (one GPU) in one call, and bring back the model.
#
# Here, once:   bash bench/device_wheels.sh                     (wheels the device image lacks -> .whl/)
# Device call:  run(command="bash training/train_device.sh", carry=[".whl"], timeout_s=600)
#               env knobs: MINUTES (training wall time, default 7), CONFIG (default configs/shapes.yaml),
#               INIT (warm-start folder, e.g. checkpoints/shapes; default none = from scratch), EVAL_N (default 200)
# Back here:    bash training/train_device.sh --unpack /work/.device/<files_at> checkpoints/shapes
#
# What comes back under $OUT (the device tool returns at most 8 files of 16 MiB): heads.safetensors (in 15 MiB
# parts, heads.safetensors.part-NN, when larger), mllm.tar,
# superlink.yaml (the trained system), train_log.jsonl, train.log, eval.json (superlink eval at EVAL_N).
# The same recipe trains on a CPU: `superlink train CONFIG --out runs/shapes [--resume]`; a run may stop with
# --max-minutes and continue with --resume in a later session.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--unpack" ]; then  # bring the returned files into a model folder
    src=${2:?usage: --unpack FILES_DIR MODEL_DIR}; dst=${3:?usage: --unpack FILES_DIR MODEL_DIR}
    mkdir -p "$dst"
    [ -f "$src/heads.safetensors" ] || cat "$src"/heads.safetensors.part-* > "$dst/heads.safetensors"
    [ -f "$src/heads.safetensors" ] && cp "$src/heads.safetensors" "$dst/"
    cp "$src/superlink.yaml" "$src/train_log.jsonl" "$src/train.log" "$dst/"
    tar -xf "$src/mllm.tar" -C "$dst"
    echo "unpacked into $dst"; exit 0
fi

OUT=${OUT:-out/device}
MINUTES=${MINUTES:-7}
CONFIG=${CONFIG:-configs/shapes.yaml}
EVAL_N=${EVAL_N:-200}
RUN=/tmp/superlink_run
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
source bench/device_wheels.sh --install  # the wheels the device image lacks, when carried in .whl/
python3 - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
init=()
[ -n "${INIT:-}" ] && init=(--init "$INIT")
set -o pipefail
python3 -m services.cli train "$CONFIG" --out "$RUN" --max-minutes "$MINUTES" "${init[@]}" 2>&1 \
    | tr '\r' '\n' | grep -v '^train: ' | tee "$OUT/train.log" || true
cp "$RUN/train_log.jsonl" "$OUT/"
model="$RUN/model"
if [ ! -d "$model" ]; then  # stopped by --max-minutes before the schedule's end: save the latest weights as a model
    python3 - "$CONFIG" "$RUN" <<'PY'
import sys
from pathlib import Path
from router.config import load_config
from router.pipeline import save_system
from training.train import build_run, restore
cfg, out = load_config(sys.argv[1]), Path(sys.argv[2])
run = build_run(cfg, out, resume=True)
print("latest step", restore(run))
save_system(cfg, run.system.cpu(), run.processor, out / "model")
PY
fi
cp "$model/superlink.yaml" "$OUT/"
if [ "$(stat -c %s "$model/heads.safetensors")" -gt $((15 * 1024 * 1024)) ]; then  # the tool returns files <= 16 MiB
    split -b 15M -d "$model/heads.safetensors" "$OUT/heads.safetensors.part-"
else
    cp "$model/heads.safetensors" "$OUT/"
fi
tar -cf "$OUT/mllm.tar" -C "$model" mllm
timeout 180 python3 -m services.cli eval --model "$model" --split val --n "$EVAL_N" --json 2>/dev/null \
    | tail -n 1 > "$OUT/eval.json" || echo '{"eval": "did not finish"}' > "$OUT/eval.json"
cat "$OUT/eval.json"
