#!/usr/bin/env bash
# Call A: GPU tests; the floor with the previous build, this build, this build with the previous
# kernels and with the unrolled variant, alternating, two rounds; Nsight Compute on the Q4_K and
# Q8_0 kernels; the host FFN of a23eb78 and of this build, alternating.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
mkdir -p "$out/a"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/a/gpu.txt" 2>&1
lscpu > "$out/a/lscpu.txt" 2>&1
cd "$here/bin"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
timeout 220 bash gpu-test.sh > "$out/a/gpu-tests.txt" 2>&1
echo "tests done after $(el)"; tail -2 "$out/a/gpu-tests.txt"
grep -E "FAILED|panicked|failed" "$out/a/gpu-tests.txt" | head -20
for round in 1 2; do
  for v in prev new newk-prev u2; do
    echo "=== $v round $round" >> "$out/a/floor.txt"
    case $v in
      prev) timeout 80 ./variants/bench-floor-prev --bench ;;
      new) timeout 80 ./bench-floor --bench ;;
      newk-prev) EXPERTSLAB_CUDA_KERNELS=variants/prev.cu timeout 80 ./bench-floor --bench ;;
      u2) EXPERTSLAB_CUDA_KERNELS=variants/u2.cu timeout 80 ./bench-floor --bench ;;
    esac >> "$out/a/floor.txt" 2>&1
    echo "=== $v round $round"; grep -A5 "^format" "$out/a/floor.txt" | tail -4
  done
done
echo "floor done after $(el)"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${ncu:-none}"
if [ -n "$ncu" ]; then
  for f in q4_k q8_0; do
    EXPERTSLAB_REPS=1 timeout 100 "$ncu" --clock-control none --kernel-name regex:"moe_(gate_up|down)_$f" \
      --launch-skip 200 --launch-count 4 --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis ./bench-floor --bench > "$out/a/ncu-$f.txt" 2>&1
    echo "ncu $f rc $? after $(el)"
    grep -E "^  moe_|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Stall|Theoretical Occ" "$out/a/ncu-$f.txt" | head -60
  done
fi
for b in host-ffn-old host-ffn host-ffn-old host-ffn; do
  echo "=== $b"
  timeout 60 "./$b" --bench --sample-count 20 "format|one_pair|expert_ffn$"
done > "$out/a/host-ffn.txt" 2>&1
grep -E "===|bf16|q8_0|q4_K|q6_K|one_pair|expert_ffn " "$out/a/host-ffn.txt" | head -40
echo "all done after $(el)"
