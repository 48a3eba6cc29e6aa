#!/usr/bin/env bash
# One GPU lease for the calibration issue, all of it in one command (on an H100 about 4 minutes
# of speed probes, then CALIB_MIN + 1 minutes of calibration; nothing here is needed by CI). Run
# from the repository root with the git-ignored folder gpu_carry/ beside it (made by
# `bash benchmarks/gpu_carry.sh`; the tree and what it carries must fit 64 MiB together):
#     gpu_carry/train/{t91,bsd}           a subset of the 291 training images
#     gpu_carry/bench/{Set5,Set14}/...    HR + LR_bicubic/X2 of the two small test sets (B100 does
#                                         not fit: evaluate the returned checkpoints on it at home)
# Phase 1, the GPU to itself: one finetuning step at batch 16 with block recompute off and on
# (seconds and peak memory), the host time of the step's bookkeeping (calib_step_bookkeeping.py),
# the whole step eager against replayed from a CUDA graph (calib_step_graph.py), and one short W2
# CompSRT calibration with the graph (calibrate()'s default on CUDA without recompute). The
# eager step's profile (calib_step_memory.py --profile) was taken on 2026-11-28 and is left out
# to keep the whole script within one 600-second call.
# Phase 2, side by side on the one GPU: the paper setting (batch 16, 4000 iterations asked,
# calibration batch 32) for CompSRT and 2DQuant at 2, 3 and 4 bits, each shortened to end within
# CALIB_MIN minutes (DOBI included; report.json says how far it got), then evaluated on Set5/Set14.
# Everything comes back in $OUT: one .tgz per calibrated model, logs.tgz (logs, reports).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_lease}
D=gpu_carry
W=$(mktemp -d)
mkdir -p "$OUT" "$W/logs"
nvidia-smi -L
$PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
$PY -c "import compsrt.calib.calibrate, compsrt.kernels.hadamard_fake_quant_triton" || exit 3   # fail fast

# Phase 1: the step alone (issue 5: 4000 iterations < 10 minutes, < 16 GB), eager and graphed.
timeout 150 $PY benchmarks/calib_step_memory.py --device cuda --batch 16 --steps 8 --rounds 1 2>&1 \
    | grep -v Warn | tee "$W/logs/calib_step_memory.log"
timeout 60 $PY benchmarks/calib_step_bookkeeping.py --device cuda 2>&1 | tee "$W/logs/bookkeeping.log"
timeout 150 $PY benchmarks/calib_step_graph.py --batch 16 2>&1 | grep -v Warn | tee "$W/logs/step_graph.log"
# calibrate() with its graphed step (the GPU default without recompute): s/iter and its "step:" line
timeout 150 $PY -m compsrt.calib --scale 2 --bits 2 --data $D/train/t91 $D/train/bsd --iters 100 --batch 16 \
    --calib-batch 32 --val-every 50 --no-recompute --device cuda --out "$W/graph_calib" --quiet \
    > "$W/logs/calib_graph.log" 2>&1
grep -E "finetuning|fidelity" "$W/graph_calib/report.md" || tail -c 1500 "$W/logs/calib_graph.log"
tar czf "$OUT/logs.tgz" -C "$W" logs   # again at the end

# Phase 2: six calibrations side by side.
# Six jobs at 13.5 GB each without block recompute do not fit an H100's 80 GB (1.1 GB each with it);
# on a card of 120 GB or more they run without it, so with the graphed step (the GPU default).
MEM_GB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{print int($1 / 1024)}')
if [ "${MEM_GB:-0}" -ge 120 ]; then RECOMPUTE=--no-recompute; else RECOMPUTE=--recompute; fi
echo "GPU memory ${MEM_GB} GB: phase 2 runs with $RECOMPUTE"
CALIB="--scale 2 --data $D/train/t91 $D/train/bsd --iters 4000 --batch 16 --calib-batch 32 --val-every 50 \
       $RECOMPUTE --minutes ${CALIB_MIN:-3} --device cuda --eval-data $D/bench --eval-sets Set5 Set14 --quiet"
PIDS=""
for b in 2 3 4; do
    for m in compsrt 2dquant; do
        $PY -m compsrt.calib --method $m --bits $b --out "$W/w${b}_$m" $CALIB > "$W/logs/calib_w${b}_$m.log" 2>&1 &
        PIDS="$PIDS $!"
    done
done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv -l 20 > "$W/logs/smi.log" 2>&1 &
SMI=$!
wait $PIDS
kill $SMI
for f in "$W"/logs/calib_*.log; do echo "== $f"; tail -c 1200 "$f" | tr '\r' '\n' | tail -4; done
for r in "$W"/w*/report.md; do echo "== $r"; cat "$r"; done
echo "== GPU memory used / utilisation every 20 s"; cat "$W/logs/smi.log"
for d in "$W"/w*; do
    cp "$d/report.json" "$W/logs/$(basename "$d")_report.json" 2>/dev/null
    tar czf "$OUT/$(basename "$d").tgz" -C "$d" --exclude='calib_state.safetensors' .
done

tar czf "$OUT/logs.tgz" -C "$W" logs
ls -la "$OUT"
