#!/usr/bin/env bash
# Long VQA-only runs (bench/vqa_learning.py) on the device machine, side by side on its one GPU, in one call:
# the CPU measurements (EVAL.md, "Learning rate, a scene-size curriculum, patch positions and the tokenizer")
# stop where question types are still being learnt one by one; this runs the same settings for as many steps as
# MINUTES allow.
#
# Here, once:   bash bench/device_wheels.sh                 (wheels the device image lacks -> .whl/)
# Device call:  run(command="bash bench/vqa_device.sh", carry=[".whl"], timeout_s=600)
#               env knobs: MINUTES (training wall time of each run, default 7), RUNS (names below, default all)
# CPU check:    bash bench/vqa_device.sh --cpu              (configs/tiny.yaml, a few steps each, no GPU)
#
# Runs (lr 3e-4, batch 8 unless said, teacher-forced accuracy on 512 val questions every EVAL_EVERY steps):
#   oracle_curriculum  exact per-patch labels and patch positions as image tokens (--image oracle_pos),
#                      one-object scenes to step 1500, two to 3000
#   oracle_flat        the same without the curriculum
#   oracle_words       the same labels also as the LLM's own embeddings of their words (--image oracle_words)
#   vision_frozen      configs/shapes_vision.yaml's tower: 800 steps on the dense labels, then frozen; curriculum
#   vision_joint       configs/shapes.yaml's tower trained with the LLM, as the shipped recipe does; curriculum
#   text               no picture: the scene written out in words (--image text), the LLM's own ceiling; curriculum
#   text_b64           the same at batch 64 and lr 1e-3: whether counting is a matter of questions seen
#   text_b256          the scene in words at batch 256, lr 1e-3, no curriculum: on the CPU the first setting under
#                      which colour, shape, side and height were learnt from words; count and exists were not
#                      (EVAL.md, "Batch size")
#   oracle_b256        exact labels and patch positions at batch 256, lr 1e-3, no curriculum
#   vision_frozen_b256 the frozen dense-label tower (pre-trained at batch 8) with VQA at batch 256, lr 3e-4, no
#                      curriculum: the CPU run that lifted count over its prior (0.553 at step 536, still rising;
#                      EVAL.md, "Image tokens at batch 256"), taken as far as the device call allows
#   vision_frozen_b256_init  the same from the shipped model (--init checkpoints/shapes, configs/shapes_read.yaml:
#                      its LLM and tokenizer, a fresh dense-label tower): does the shipped LLM learn to read as
#                      fast as a fresh one (EVAL.md, "The shipped LLM at batch 256")? checkpoints/shapes in both modes
# Results under $OUT: vqa_<run>.log and vqa_<run>.json (the run's JSON line), device.txt, and a summary printed
# last (one JSON object: run -> steps, acc, acc_by_type, prior).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"
OUT="${OUT:-bench/out}"
MINUTES="${MINUTES:-7}"
ALL="oracle_curriculum oracle_flat oracle_words vision_frozen vision_joint text text_b64 text_b256 oracle_b256 vision_frozen_b256
     vision_frozen_b256_init"
RUNS="${RUNS:-$ALL}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
source bench/device_wheels.sh --install   # diffusers, pycocotools, pydantic...: carried as .whl/
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$OUT/device.txt"

if [ "$MODE" = "--cpu" ]; then
  DEVICE=cpu; STEPS=6; EVAL_EVERY=3; PRETRAIN=2; SHAPES=configs/tiny.yaml; VISION="$OUT/tiny_vision.yaml"
  CURRICULUM=3:1; EXTRA=(--val 32)
  "$PY" - "$VISION" <<'PY'   # configs/tiny.yaml with shapes_vision.yaml's image-side options
import sys
import yaml
from shapesworld.scene import DENSE_LABELS
cfg = yaml.safe_load(open("configs/tiny.yaml"))
cfg["model"].update(projector_norm=True, dense_probe={"labels": len(DENSE_LABELS), "weight": 1.0})
open(sys.argv[1], "w").write(yaml.safe_dump(cfg))
PY
else
  if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "vqa_device.sh: $PY has no CUDA torch; use --cpu to check the kit without a GPU" >&2
    exit 2
  fi
  DEVICE=cuda; STEPS=1000000; EVAL_EVERY="${EVAL_EVERY:-1000}"; PRETRAIN=800
  SHAPES=configs/shapes.yaml; VISION=configs/shapes_vision.yaml; CURRICULUM=1500:1,3000:2; EXTRA=()
fi
common=(--lr 3e-4 --steps "$STEPS" --eval-every "$EVAL_EVERY" --device "$DEVICE" --max-minutes "$MINUTES" --json "${EXTRA[@]}")
args_for() {
  case "$1" in
    oracle_curriculum) echo "--config $SHAPES --image oracle_pos --objects-schedule $CURRICULUM" ;;
    oracle_flat) echo "--config $SHAPES --image oracle_pos" ;;
    oracle_words) echo "--config $SHAPES --image oracle_words --objects-schedule $CURRICULUM" ;;
    vision_frozen) echo "--config $VISION --image vision --pretrain-dense $PRETRAIN --freeze-image --objects-schedule $CURRICULUM" ;;
    vision_joint) echo "--config $SHAPES --image vision --objects-schedule $CURRICULUM" ;;
    text) echo "--config $SHAPES --image text --objects-schedule $CURRICULUM" ;;
    text_b64) echo "--config $SHAPES --image text --objects-schedule $CURRICULUM --batch 64 --lr 1e-3" ;;
    text_b256) echo "--config $SHAPES --image text --batch 256 --lr 1e-3" ;;
    oracle_b256) echo "--config $SHAPES --image oracle_pos --batch 256 --lr 1e-3" ;;
    vision_frozen_b256) echo "--config $VISION --image vision --pretrain-dense $PRETRAIN --pretrain-batch 8 --freeze-image --batch 256 --lr 3e-4" ;;
    vision_frozen_b256_init) echo "--config configs/shapes_read.yaml --init checkpoints/shapes --image vision --pretrain-dense $PRETRAIN --pretrain-batch 8 --freeze-image --batch 256 --lr 3e-4" ;;
    *) echo "vqa_device.sh: unknown run '$1'; known: $ALL" >&2; return 1 ;;
  esac
}
pids=()
for run in $RUNS; do
  a=$(args_for "$run") || exit 2
  # shellcheck disable=SC2086
  "$PY" bench/vqa_learning.py "${common[@]}" $a > "$OUT/vqa_$run.log" 2>&1 &   # a run's own flags win
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for run in $RUNS; do
  tail -n 1 "$OUT/vqa_$run.log" | grep '^{' > "$OUT/vqa_$run.json" || { echo "vqa_device.sh: $run failed:"; tail -n 5 "$OUT/vqa_$run.log"; status=1; }
done
"$PY" - "$OUT" $RUNS <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
for run in sys.argv[2:]:
    text = (out / f"vqa_{run}.json").read_text().strip()
    if text:
        r = json.loads(text)
        summary[run] = {k: r[k] for k in ("steps", "acc", "acc_by_type", "acc_one_object", "prior", "train_s", "device")}
print(json.dumps(summary))
PY
exit $status
