#!/usr/bin/env bash
# GPU call: the GPU lane (this build: L2 prefetch of a block's rows and of the pair's down by
# gate/up, down launched as a programmatic dependent); the bit tests again with PDL off; the
# floor of r0 (the previous kernels, PDL off), this build with PDL on and off, and the variants
# rows (prefetch own rows only) and none (no prefetch, PDL on), alternating, two rounds.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
# llama.cpp built beside the tests, for a later call on the same machine (gpu-session-type.sh).
( BUILD=/tmp/llama-build timeout 330 bash "$here/peer-llamacpp.sh" build > "$out/llama-build.txt" 2>&1; echo "llama build rc $?" >> "$out/llama-build.txt" ) &
build=$!
cd "$here/bin"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
timeout ${TEST_LIMIT:-200} bash gpu-test.sh > "$out/gpu-tests.txt" 2>&1
echo "tests done after $(el)"; tail -2 "$out/gpu-tests.txt"
grep -E "FAILED|panicked|failed" "$out/gpu-tests.txt" | head -20
EXPERTSLAB_CUDA_PDL=0 timeout 120 ./test-gpu_ffn --include-ignored --test-threads=1 > "$out/gpu-ffn-pdl0.txt" 2>&1
echo "gpu_ffn with PDL off: rc $? after $(el)"; grep -E "test result|FAILED|panicked" "$out/gpu-ffn-pdl0.txt" | head -5
wait $build; echo "llama build done after $(el)"; tail -1 "$out/llama-build.txt"
for round in 1 2; do
  for v in ${VARIANTS:-r0:0 main:1 main:0 rows:1 none:1}; do
    name=${v%:*}; pdl=${v#*:}
    echo "=== $name pdl $pdl round $round" >> "$out/floor.txt"
    if [ $name = main ]; then k=; else k=variants/$name.cu; fi
    env ${k:+EXPERTSLAB_CUDA_KERNELS=$k} EXPERTSLAB_CUDA_PDL=$pdl timeout 80 ./bench-floor --bench >> "$out/floor.txt" 2>&1
    echo "=== $name pdl $pdl round $round after $(el)"; grep -A5 "^format" "$out/floor.txt" | tail -4
  done
done
echo "all done after $(el)"
