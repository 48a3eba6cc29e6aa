#!/usr/bin/env bash
# Build gpu_carry/ (git-ignored), the data benchmarks/gpu_lease.sh needs on the lent GPU, from the
# shared data beside the repository; pass it to the device tool as carry ["gpu_carry"]. The tree
# and its carry travel in 64 MiB together, so: all of T91 and the first 40 BSD200 images by name
# (calibration), Set5 and Set14 HR + LR_bicubic/X2 (evaluation; B100 does not fit).
#     bash benchmarks/gpu_carry.sh [SHARED_DATA]      # default ../shared/data
set -eu
SRC=${1:-../shared/data}
[ -d "$SRC/train/t91" ] || { echo "gpu_carry.sh: $SRC/train/t91 not found; pass the shared data folder" >&2; exit 2; }
rm -rf gpu_carry
mkdir -p gpu_carry/train/t91 gpu_carry/train/bsd
cp "$SRC"/train/t91/* gpu_carry/train/t91/
ls "$SRC"/train/bsd200 | sort | head -40 | while read -r f; do cp "$SRC/train/bsd200/$f" gpu_carry/train/bsd/; done
for s in Set5 Set14; do
    mkdir -p "gpu_carry/bench/$s/LR_bicubic"
    cp -r "$SRC/benchmark/$s/HR" "gpu_carry/bench/$s/"
    cp -r "$SRC/benchmark/$s/LR_bicubic/X2" "gpu_carry/bench/$s/LR_bicubic/"
done
echo "gpu_carry: $(du -sm gpu_carry | cut -f1) MiB; the tracked tree: $(git ls-files -z | xargs -0 du -cm 2>/dev/null | tail -1 | cut -f1) MiB (64 MiB together at most)"
