#!/usr/bin/env bash
# Continue training the shipped segany-lite model on the accelerator machine, then evaluate it: one prepared command
# for a session whose task is lent a GPU (issue 6: the CPU here gives too few steps). About 9 minutes in all:
# 6 of training, then the evaluation on the machine's CPUs (1-2 minutes), inside one 600-second call.
#
# Through the device tool, from the repository root:
#   run(command="bash scripts/device_train.sh", timeout_s=600)
# What comes back under $OUT: segany-lite.pt (fp16 weights, the --export of the run), train.log, eval.txt,
# eval.json. Copy segany-lite.pt over segany/weights/segany-lite.pt only if eval.txt beats the README's numbers,
# and record the command and the numbers in docs/shipped_model.md.
#
# The machine's image has torch, numpy, OpenCV, Pillow and tqdm; training and evaluation need nothing else (no
# pycocotools). Knobs (environment): MINUTES (training budget, default 6), DEVICE (cuda), WORKERS (scene-drawing
# processes, default 14 of the 16 cores), BATCH (scenes per step at 512, default 24), SEED (scene stream, default 9),
# N_EVAL (held-out scenes, default 200). A smoke run on a CPU:
#   OUT=/tmp/out DEVICE=cpu MINUTES=0.5 WORKERS=2 BATCH=2 N_EVAL=4 bash scripts/device_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder for the results}"
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-14}
BATCH=${BATCH:-24}
SEED=${SEED:-9}
N_EVAL=${N_EVAL:-200}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# The recipe of stages 5-7 (docs/shipped_model.md), warm-started from the shipped weights, with a GPU-sized batch.
RUN=$(mktemp -d /tmp/segany-run.XXXXXX)  # fresh: a warm machine's old checkpoint must not be resumed
"$PYTHON" -m segany.training.train --out "$RUN" --init segany/weights/segany-lite.pt --device "$DEVICE" \
    --workers "$WORKERS" --batch "$BATCH" --minutes "$MINUTES" --seed "$SEED" --dice-weight 5 --sizes 512,768 \
    --hires-frac 0.5 --prompts 6 --rounds 3 --lr 3e-4 --warmup 50 --checkpoint-minutes 100 --log-every 20 \
    --export "$OUT/segany-lite.pt" 2>&1 | tee "$OUT/train.log"

"$PYTHON" -m segany.training.evaluate --weights "$OUT/segany-lite.pt" --n "$N_EVAL" --seed 12345 \
    --threads "$(( $(nproc) < 8 ? $(nproc) : 8 ))" --json "$OUT/eval.json" 2>&1 | tee "$OUT/eval.txt"
