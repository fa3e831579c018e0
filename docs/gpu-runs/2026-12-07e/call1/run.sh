#!/usr/bin/env bash
# Call A: GPU tests (llama.cpp built meanwhile), the floor with the old and new kernels
# alternating, the host FFN old and new alternating.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
mkdir -p "$out/a"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/a/gpu.txt" 2>&1
lscpu > "$out/a/lscpu.txt" 2>&1
(BUILD=/tmp/llama-build bash "$here/peer-llamacpp.sh" build > "$out/a/llama-build.txt" 2>&1; echo "build rc $? after $(( $(date +%s) - start )) s" >> "$out/a/llama-build.txt") &
bpid=$!
(cd "$here/bin" && timeout 300 bash gpu-test.sh) > "$out/a/gpu-tests.txt" 2>&1
echo "tests done after $(( $(date +%s) - start )) s"; tail -3 "$out/a/gpu-tests.txt"
grep -E "FAILED|panicked|failed" "$out/a/gpu-tests.txt" | head -20
wait $bpid; tail -1 "$out/a/llama-build.txt"
cd "$here/bin"
for round in 1 2; do
  for v in old new; do
    echo "=== $v round $round" >> "$out/a/floor.txt"
    if [ $v = old ]; then k=variants/old.cu; else k=; fi
    env ${k:+EXPERTSLAB_CUDA_KERNELS=$k} LD_LIBRARY_PATH=/usr/local/cuda/lib64 timeout 100 ./bench-floor --bench >> "$out/a/floor.txt" 2>&1
    echo "=== $v round $round"; grep -A5 "^format" "$out/a/floor.txt" | tail -4
  done
done
echo "floor done after $(( $(date +%s) - start )) s"
for b in host-ffn-old host-ffn host-ffn-old host-ffn; do
  echo "=== $b"
  timeout 60 "./$b" --bench --sample-count 20 "format|one_pair|expert_ffn$"
done > "$out/a/host-ffn.txt" 2>&1
grep -E "===|bf16|q8_0|q4_K|q6_K|one_pair|expert_ffn " "$out/a/host-ffn.txt" | head -40
echo "all done after $(( $(date +%s) - start )) s"
