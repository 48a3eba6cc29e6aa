#!/usr/bin/env bash
# GPU check of the fused Hadamard + fake-quant Triton kernels (issue 4), one shot, < 5 minutes on
# an H100. Run from the repository root on a CUDA machine (no network needed):
#
#     bash benchmarks/gpu_check.sh            # benchmark JSON goes to $OUT (or /tmp) as well
#
# 1. the GPU and versions; 2. the kernel tests compiled on CUDA (every marker, incl. the n = 256
# probe test_kernels_at_n256_when_enabled); 3. the benchmarks, saved with --benchmark-json;
# 4. the targets: fused forward within 1.5x of torch.clone, fused fwd+bwd >= 10x faster than the
# official way, and the host overhead of one tiny call (what bounds the small shapes).
set -u
export PYTHONPATH=.
PY=${PYTHON:-python3}
DEST=${OUT:-/tmp/compsrt_gpu_check}
mkdir -p "$DEST"
JSON="$DEST/bench_hadamard_fake_quant.json"

echo "== device"
nvidia-smi -L
$PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"

TESTS_RC=skipped
if [ -z "${SKIP_TESTS:-}" ]; then   # SKIP_TESTS=1: the caller ran them already (benchmarks/gpu_lease.sh)
    echo "== kernel tests on CUDA"
    XDIST=""
    if $PY -c "import xdist" 2>/dev/null; then XDIST="-n 8"; fi   # Triton compiles dominate: spread them
    timeout 200 $PY -m pytest tests/kernels -m "not slow or slow" -q -p no:cacheprovider $XDIST -rfEs 2>&1 | tail -40
    TESTS_RC=${PIPESTATUS[0]}
    echo "kernel tests exit code: $TESTS_RC"
fi

echo "== benchmarks"
timeout 150 $PY -m pytest benchmarks/bench_hadamard_fake_quant.py -q -p no:cacheprovider -k "not cpu_target" \
    --benchmark-json="$JSON" --benchmark-columns=median,min --benchmark-sort=name 2>&1 | tail -120
BENCH_RC=${PIPESTATUS[0]}
echo "benchmarks exit code: $BENCH_RC"

echo "== targets"
timeout 60 $PY - "$JSON" <<'EOF'
import json
import sys
import time
from collections import defaultdict

import torch

from compsrt.kernels.hadamard_fake_quant_triton import hadamard_fake_quant_triton

try:
    with open(sys.argv[1]) as f:
        runs = json.load(f)["benchmarks"]
except (OSError, KeyError, ValueError) as e:
    sys.exit(f"no benchmark JSON ({e})")
median = defaultdict(dict)  # group -> impl -> median seconds
for b in runs:
    median[b["group"]][b["extra_info"]["impl"]] = b["stats"]["median"]
print(f"{'group':28s} {'triton us':>10s} {'clone us':>9s} {'official us':>12s} {'ref us':>9s} "
      f"{'triton/clone':>13s} {'official/triton':>16s}  target")
for group in sorted(median):
    t = median[group]
    if not {"triton", "clone", "official", "ref"} <= t.keys():
        continue
    us = {k: v * 1e6 for k, v in t.items()}
    vs_clone, vs_official = t["triton"] / t["clone"], t["official"] / t["triton"]
    if group.endswith("fwd+bwd"):
        verdict = f"fwd+bwd >= 10x faster than official: {'PASS' if vs_official >= 10 else 'FAIL'}"
    else:
        verdict = f"fwd within 1.5x of clone: {'PASS' if vs_clone <= 1.5 else 'FAIL'}"
    print(f"{group:28s} {us['triton']:10.1f} {us['clone']:9.1f} {us['official']:12.1f} {us['ref']:9.1f} "
          f"{vs_clone:12.2f}x {vs_official:15.1f}x  {verdict}")

# Host overhead: a tiny input, so the time is launch + Python (validation, views, autograd).
x = torch.randn(64, 60, device="cuda", dtype=torch.float16)
lo, hi, s2, z2 = (torch.tensor(v, device="cuda") for v in (-2.0, 2.5, -0.01, 0.02))


def per_call_us(fn, n=200):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


with torch.no_grad():
    print(f"host overhead per call (64 x 60 fp16): fused fwd {per_call_us(lambda: hadamard_fake_quant_triton(x, lo, hi, 4, s2, z2)):.1f} us,"
          f" clone {per_call_us(lambda: x.clone()):.1f} us,"
          f" step check alone {per_call_us(lambda: torch._assert_async((torch.add(hi - lo, s2, alpha=15) > 0).reshape(()))):.1f} us")
EOF
echo "== done (tests rc=$TESTS_RC, benchmarks rc=$BENCH_RC; JSON: $JSON)"
