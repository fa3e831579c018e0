#!/usr/bin/env bash
# Call D: GPU tests with Q6_K's spread down in the built-in kernels, then the floor of the
# built-in kernels against e1e0ebb's (r2), alternating, two rounds.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
mkdir -p "$out/d"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/d/gpu.txt" 2>&1
cd "$here/bin"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
timeout 150 bash gpu-test.sh > "$out/d/gpu-tests.txt" 2>&1
echo "tests done after $(el)"; tail -2 "$out/d/gpu-tests.txt"
grep -E "FAILED|panicked|failed" "$out/d/gpu-tests.txt" | head -20
for round in 1 2; do
  for v in main r2; do
    if [ $v = main ]; then k=; else k=variants/$v.cu; fi
    echo "=== $v round $round" >> "$out/d/floor.txt"
    env ${k:+EXPERTSLAB_CUDA_KERNELS=$k} timeout 40 ./bench-floor --bench >> "$out/d/floor.txt" 2>&1
    echo "=== $v round $round"; grep -A5 "^format" "$out/d/floor.txt" | tail -4
  done
done
echo "all done after $(el)"
