#!/usr/bin/env bash
# One GPU call for the compressed engine (issue 19), most important first, within 6 minutes (the timeouts of steps 1-4
# add up to 375 s) on an H100, 9 with step 5 (535 s). Run from the repository root on the lent machine; carry ["csrc/build", "gpu_carry"]:
#   csrc/build/   the csrc library prebuilt here (python -m compsrt.kernels.packed_linear_cuda), in
#                 case the GPU machine has no nvcc
#   gpu_carry/    Set5 HR + LR_bicubic/X2 for the packed-vs-CPU PSNR check (bash benchmarks/gpu_carry.sh)
# 0. device and versions; 1. CUDA and Triton tests (csrc accumulators bit for bit, the fused int8
# attention and Hadamard+quantize kernels compiled, the packed runtime on CUDA against the CPU one);
# 2. benchmarks with --benchmark-json into $OUT: whole model (FP32, FP16, fake-quant, packed W4/W2,
# packed W4 replayed from a CUDA graph), the packed linear products, the fused attention;
# 3. Set5 x2 PSNR of the bundled packed W4 on CUDA and on the CPU; 3b. compsrt-infer --half's Set5
# PSNR change (issue 25); 4. the other kernel tests; 5. MambaIRv2-light x2 W4 calibration in the GPU
# setting for 2 minutes (issue 20: s/iteration, step mode, memory, packed Set5 PSNR).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_engine}
mkdir -p "$OUT"
nvidia-smi -L
$PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
which nvcc || echo "no nvcc: the carried csrc/build library is the only csrc path"

echo "== 1. CUDA + Triton tests"
timeout 110 $PY -m pytest tests/kernels/test_csrc.py tests/kernels/test_window_attention_int_triton.py \
    tests/kernels/test_hadamard_quant_triton.py tests/runtime/test_runtime_cuda.py -m "cuda or not cuda" \
    -q -x -p no:cacheprovider -rfEs 2>&1 | tail -25

echo "== 2. benchmarks"
timeout 80 $PY -m pytest benchmarks/bench_infer.py -k "cuda" -q -p no:cacheprovider \
    --benchmark-json "$OUT/bench_infer_gpu.json" --benchmark-columns=median,iqr,rounds 2>&1 | tail -25
timeout 35 $PY -m pytest benchmarks/bench_packed_linear.py -q -p no:cacheprovider \
    --benchmark-json "$OUT/bench_packed_linear.json" --benchmark-columns=median,iqr 2>&1 | tail -20
timeout 35 $PY -m pytest benchmarks/bench_window_attention_int.py -q -p no:cacheprovider \
    --benchmark-json "$OUT/bench_window_attention_int.json" --benchmark-columns=median,iqr 2>&1 | tail -20

echo "== 3. Set5 x2, bundled packed W4: CUDA and CPU"
if [ -d gpu_carry/bench/Set5 ]; then
    for dev in cuda cpu; do
        timeout 20 $PY -m compsrt.eval --model swinir_light_x2_w4 --scale 2 --data gpu_carry/bench --sets Set5 \
            --device $dev --json "$OUT/eval_w4_$dev.json" --quiet 2>&1 | tail -3
    done
fi
echo "== 3b. compsrt-infer --half: Set5 x2 PSNR of each bundled x2 model in fp32, fp16, bf16 (issue 25)"
if [ -d gpu_carry/bench/Set5 ]; then
    timeout 45 $PY benchmarks/half_psnr.py --data gpu_carry/bench --scale 2 --sets Set5 --json "$OUT/half_psnr.json" 2>&1 | tail -12
fi
echo "== 4. the rest of the kernel tests on CUDA"
timeout 30 $PY -m pytest tests/kernels -q -p no:cacheprovider -x 2>&1 | tail -5
echo "== 5. MambaIRv2-light x2 W4 calibration, GPU setting, 2 minutes"
if [ -d gpu_carry/train ]; then
    timeout 160 $PY -m compsrt.calib --arch mambairv2-light --scale 2 --bits 4 --out "$OUT/mamba_x2_w4" \
        --data gpu_carry/train --minutes 2 --eval-data gpu_carry/bench --eval-sets Set5 --quiet 2>&1 | tail -20
fi
ls -la "$OUT"
