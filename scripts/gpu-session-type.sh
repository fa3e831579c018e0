#!/usr/bin/env bash
# After gpu-session.sh, on the same warm machine (its llama.cpp build is reused): the side by
# side on a file of expert type TYPE (q8_0, q4_k, q6_k, q4_k_m; make-moe-gguf.py's), packed as
# OUT/TYPE.tar.gz. REPS_LLAMA and REPS_OURS: repetitions (default 3 each).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
t=${TYPE:-q8_0}
mkdir -p "$out/$t"
[ -x /tmp/llama-build/bin/llama-bench ] || { echo "no llama build: the machine was not kept"; exit 3; }
start=$(date +%s)
export MODEL=/tmp/expertslab-peer-$t.gguf MODEL_ARGS="--expert-type $t"
BUILD=/tmp/llama-build REPS=${REPS_LLAMA:-3} bash "$here/peer-llamacpp.sh" llama "$out/$t" > "$out/$t/llama-run.txt" 2>&1
echo "llama done after $(( $(date +%s) - start )) s"
BUILD=/tmp/llama-build REPS=${REPS_OURS:-3} bash "$here/peer-llamacpp.sh" ours "$out/$t" > "$out/$t/ours-run.txt" 2>&1
echo "ours done after $(( $(date +%s) - start )) s"
tar -czf "$out/$t.tar.gz" -C "$out" "$t" && rm -rf "${out:?}/$t"
