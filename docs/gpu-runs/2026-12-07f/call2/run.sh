#!/usr/bin/env bash
# Call B: GPU tests (this build: block formats in blocks of 16 warps of one row each), the bit
# tests again with the variant w16u1; the floor of this build's kernels, of e1e0ebb's (r2:
# 8 warps of 2 rows) and of the variants, alternating, two rounds; Nsight Compute on Q4_K.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
mkdir -p "$out/b"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/b/gpu.txt" 2>&1
cd "$here/bin"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
timeout 200 bash gpu-test.sh > "$out/b/gpu-tests.txt" 2>&1
echo "tests done after $(el)"; tail -2 "$out/b/gpu-tests.txt"
grep -E "FAILED|panicked|failed" "$out/b/gpu-tests.txt" | head -20
for v in ${VARIANTS_TESTED:-w16u1 spread}; do
  EXPERTSLAB_CUDA_KERNELS=variants/$v.cu timeout 120 ./test-gpu_ffn --include-ignored --test-threads=1 > "$out/b/gpu-ffn-$v.txt" 2>&1
  echo "gpu_ffn with $v: rc $? after $(el)"; grep -E "test result|FAILED|panicked" "$out/b/gpu-ffn-$v.txt" | head -5
done
for round in 1 2; do
  for v in main ${VARIANTS:-r2 w16u1 w16u1b3 spread}; do
    echo "=== $v round $round" >> "$out/b/floor.txt"
    if [ $v = main ]; then k=; else k=variants/$v.cu; fi
    env ${k:+EXPERTSLAB_CUDA_KERNELS=$k} timeout 80 ./bench-floor --bench >> "$out/b/floor.txt" 2>&1
    echo "=== $v round $round"; grep -A5 "^format" "$out/b/floor.txt" | tail -4
  done
done
echo "floor done after $(el)"
for v in main ${NCU_VARIANTS:-w16u1 spread}; do
  if [ $v = main ]; then k=; else k=variants/$v.cu; fi
  env ${k:+EXPERTSLAB_CUDA_KERNELS=$k} EXPERTSLAB_REPS=1 timeout 100 /usr/local/cuda/bin/ncu --clock-control none \
    --kernel-name regex:"moe_(gate_up|down)_q4_k" --launch-skip 200 --launch-count 2 --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats ./bench-floor --bench > "$out/b/ncu-q4_k-$v.txt" 2>&1
  echo "ncu $v after $(el)"
  grep -E "^  moe_|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued" "$out/b/ncu-q4_k-$v.txt" | head -14
done
echo "all done after $(el)"
