#!/usr/bin/env bash
# The whole GPU comparison of issue 11 on one lent H100/H200, in under 8 minutes:
#   1. training throughput, published recipe vs our fastest settings, for CycleGAN and pix2pix at
#      256 px, on device batches AND fed from shards through our loader (+ device-resident);
#   2. the loader alone (slices/s per core at 256 px crops).
# Needs only torch + numpy (the shards are written with numpy; no yaml/nibabel/ray/mlflow).
# Results: JSON lines in $OUT/gpu_check/*.jsonl (rows are written as they are measured, so a
# timeout keeps what was done), the table in $OUT/gpu_check/summary.txt.
#
#   bash bench/gpu_check.sh            # from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-.}/gpu_check"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true;
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)"; } \
  > "$DEST/env.txt" 2>&1
cat "$DEST/env.txt"
# 1. training (~5.5 min: compile + 5 s windows); hard limit 6.5 min
timeout 390 "$PY" bench/train_throughput.py --size 256 --window 5 --warmup 5 --compile-mode default \
  --fast-batch cyclegan:32,pix2pix:64 --workers-train 8 --n-slices 2048 \
  --out "$DEST/train.jsonl" 2> >(tee "$DEST/summary.txt" >&2)
echo "train_throughput exit: $?"
# 2. the loader alone (~40 s); hard limit 75 s
timeout 75 "$PY" bench/train_throughput.py --loader-only --crop 256 --workers 0,4,8 --window 5 \
  --n-slices 2048 --out "$DEST/loader.jsonl" 2> >(tee -a "$DEST/summary.txt" >&2)
echo "loader exit: $?"
