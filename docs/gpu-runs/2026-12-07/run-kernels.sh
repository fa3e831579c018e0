#!/usr/bin/env bash
# Usage: bash run-kernels.sh OUT TESTS(0|1) ROUNDS VARIANT...
cd "$(dirname "$0")"
out=$1; tests=$2; rounds=$3; shift 3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
if [ "$tests" = 1 ]; then timeout 300 bash gpu-test.sh > "$out/gpu-tests.txt" 2>&1; tail -3 "$out/gpu-tests.txt"; fi
for round in $(seq 1 "$rounds"); do
  for v in "$@"; do
    echo "=== $v round $round" >> "$out/floor.txt"
    EXPERTSLAB_CUDA_KERNELS=variants/$v.cu timeout 120 ./bench-floor --bench >> "$out/floor.txt" 2>&1
    echo "=== $v round $round" ; grep -A5 "^format" "$out/floor.txt" | tail -4 | awk '{print $1, $3, $6, $7}'
  done
done
if [ -x ./bench-floor-inst ]; then
  echo "=== inst" >> "$out/floor.txt"
  EXPERTSLAB_PHASES=1 EXPERTSLAB_REPS=3 timeout 120 ./bench-floor-inst --bench >> "$out/floor.txt" 2>&1
  grep "^phases" "$out/floor.txt" | head -20
fi
