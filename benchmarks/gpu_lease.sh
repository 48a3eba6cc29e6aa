#!/usr/bin/env bash
# One GPU lease, all of it in one command (about 8 minutes on an H100/H200; nothing here is
# needed by CI). Run from the repository root with the git-ignored folder gpu_carry/ beside it:
#     gpu_carry/train/{t91,bsd}  a subset of the 291 training images (the carry limit is 64 MiB)
#     gpu_carry/bench/Set5       for the calibrated models' quick check
# Phase 1, side by side on the one GPU: warm restarts of the x3 and x4 FP weights (issue 3),
# W4 calibration of the shipped x2 weights with CompSRT and with 2DQuant (issue 5), and the kernel
# tests on CUDA. Each job has a wall-clock budget (--minutes) so the phase ends in time.
# Phase 2, the GPU to itself: the kernel benchmarks (benchmarks/gpu_check.sh) and the finetuning
# step at batch 16 with and without block recompute (benchmarks/calib_step_memory.py).
# Everything comes back in $OUT: lease.tgz (weights, logs, reports) and the benchmark JSON.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_lease}
D=gpu_carry
W=$(mktemp -d)
mkdir -p "$OUT" "$W/logs"
nvidia-smi -L
$PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"

TRAIN="--data $D/train/t91 $D/train/bsd --batch 32 --patch 64 --lr 5e-4 --min-lr 1e-6 --warmup 100 \
       --val-every 250 --val-images 10 --iters 20000 --minutes ${TRAIN_MIN:-5} --device cuda"
for s in 3 4; do
    $PY -m compsrt.train --scale $s --init compsrt/weights/swinir_light_x$s.safetensors --out "$W/x$s" $TRAIN \
        > "$W/logs/train_x$s.log" 2>&1 &
done
CALIB="--scale 2 --bits 4 --data $D/train/t91 $D/train/bsd --minutes ${CALIB_MIN:-4} --device cuda \
       --eval-data $D/bench --eval-sets Set5 --quiet"
for m in compsrt 2dquant; do
    $PY -m compsrt.calib --method $m --out "$W/calib_w4_$m" $CALIB > "$W/logs/calib_w4_$m.log" 2>&1 &
done
XDIST=""
if $PY -c "import xdist" 2>/dev/null; then XDIST="-n 6"; fi
timeout 240 $PY -m pytest tests/kernels -m "not slow or slow" -q -p no:cacheprovider $XDIST -rfEs \
    > "$W/logs/kernel_tests.log" 2>&1
echo "kernel tests exit code: $?"; tail -5 "$W/logs/kernel_tests.log"
wait
for f in "$W"/logs/*.log; do echo "== $f"; tail -c 1500 "$f" | tr '\r' '\n' | tail -6; done
for r in "$W"/calib_*/report.md; do echo "== $r"; cat "$r"; done
for l in "$W"/x*/log.jsonl; do echo "== $l"; cat "$l"; done
tar czf "$OUT/lease.tgz" -C "$W" --exclude='*state.safetensors' .   # again below, with the benchmarks

SKIP_TESTS=1 OUT="$OUT" timeout 240 bash benchmarks/gpu_check.sh 2>&1 | tee "$W/logs/gpu_check.log"
# The finetuning step at the paper's batch, block recompute off and on (issue 5: < 16 GB, 4000 its < 10 min).
timeout 120 $PY benchmarks/calib_step_memory.py --device cuda --batch 16 --steps 10 --rounds 1 2>&1 \
    | grep -v Warn | tee "$W/logs/calib_step_memory.log"
tar czf "$OUT/lease.tgz" -C "$W" --exclude='*state.safetensors' .
ls -la "$OUT"
