#!/usr/bin/env bash
# Usage: bash run-call2.sh OUT
cd "$(dirname "$0")"
out=$1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
timeout 300 bash gpu-test.sh > "$out/gpu-tests.txt" 2>&1; tail -2 "$out/gpu-tests.txt"
for round in 1 2; do
  for v in bench-floor-old bench-floor; do
    echo "=== $v round $round" >> "$out/floor.txt"
    timeout 120 ./$v --bench >> "$out/floor.txt" 2>&1
    echo "=== $v round $round"; grep -A5 "^format" "$out/floor.txt" | tail -4
  done
done
echo "=== inst" >> "$out/floor.txt"
EXPERTSLAB_PHASES=1 EXPERTSLAB_REPS=3 timeout 120 ./bench-floor-inst --bench >> "$out/floor.txt" 2>&1
grep "^phases" "$out/floor.txt" | head -4
for round in 1 2; do
  for v in old new; do
    echo "=== host ffn $v round $round" >> "$out/host-ffn.txt"
    timeout 100 ./hostffn-$v --bench expert_ffn_format >> "$out/host-ffn.txt" 2>&1
  done
done
grep -E "===|─ (bf16|q4_K|q8_0)" "$out/host-ffn.txt"
