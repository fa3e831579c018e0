#!/usr/bin/env bash
# One call, short: llama.cpp's build, its rows on the Q4_K_M file (3 repetitions), then
# expertslab's rows on it (REPS_OURS, default 1) with the host FFN whose f16 scales no longer
# take subnormal operands.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}/q4_k_m
mkdir -p "$out"
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1; cat "$out/gpu.txt"
BUILD=/tmp/llama-build timeout 320 bash "$here/peer-llamacpp.sh" build > "$out/llama-build.txt" 2>&1
echo "llama build rc $? after $(el)"
export MODEL=/tmp/expertslab-peer-q4_k_m.gguf MODEL_ARGS="--expert-type q4_k_m"
BUILD=/tmp/llama-build REPS=3 timeout 90 bash "$here/peer-llamacpp.sh" llama "$out" > "$out/llama-run.txt" 2>&1
echo "llama rc $? after $(el)"
BUILD=/tmp/llama-build REPS=${REPS_OURS:-1} timeout $(( ${LIMIT:-430} - ($(date +%s) - start) )) bash "$here/peer-llamacpp.sh" ours "$out" > "$out/ours-run.txt" 2>&1
echo "ours rc $? after $(el)"
tar -czf "${OUT}/q4_k_m.tar.gz" -C "${OUT}" q4_k_m && rm -rf "$out"
