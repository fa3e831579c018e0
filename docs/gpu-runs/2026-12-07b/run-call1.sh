#!/usr/bin/env bash
# Usage: bash run-call1.sh OUT
cd "$(dirname "$0")"
out=$1
start=$(date +%s)
left() { echo $(( 560 - ($(date +%s) - start) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
timeout 240 bash gpu-test.sh > "$out/gpu-tests.txt" 2>&1; tail -2 "$out/gpu-tests.txt"
echo "tests done at $(( $(date +%s) - start )) s"
for round in 1 2; do
  for v in base-floor bench-floor; do
    [ "$(left)" -gt 60 ] || break 2
    echo "=== $v round $round" >> "$out/floor.txt"
    s=$(date +%s)
    timeout 90 ./$v --bench >> "$out/floor.txt" 2>&1
    echo "=== $v round $round ($(( $(date +%s) - s )) s)"; grep -A5 "^format" "$out/floor.txt" | tail -4
  done
done
for v in base-decode bench-decode; do
  l=$(left); [ "$l" -gt 40 ] || break
  echo "=== $v peer rows" >> "$out/decode.txt"
  EXPERTSLAB_ROWS=peer EXPERTSLAB_REPS=3 timeout $(( l / 2 )) ./$v --bench >> "$out/decode.txt" 2>&1
  echo "=== $v done at $(( $(date +%s) - start )) s"
done
grep -E '^===|^peer' "$out/decode.txt" | head -60
