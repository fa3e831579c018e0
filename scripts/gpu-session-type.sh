#!/usr/bin/env bash
# The side by side on a file of expert type TYPE (q8_0, q4_k, q6_k, q4_k_m; make-moe-gguf.py's),
# packed as OUT/TYPE.tar.gz: after gpu-session.sh on the same warm machine, its llama.cpp build
# is reused; on a fresh one it is built first. REPS_LLAMA and REPS_OURS: repetitions (default 3
# each). LIMIT: seconds the call may take (default 585; each phase is cut to fit).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
t=${TYPE:-q8_0}
mkdir -p "$out/$t"
start=$(date +%s)
left() { echo $(( ${LIMIT:-585} - ($(date +%s) - start) )); }
# On a machine that was not kept, llama.cpp is built first (a few minutes).
BUILD=/tmp/llama-build bash "$here/peer-llamacpp.sh" build > "$out/$t/llama-build.txt" 2>&1 ||
  { tail -5 "$out/$t/llama-build.txt"; exit 3; }
echo "llama.cpp ready after $(( $(date +%s) - start )) s"
export MODEL=/tmp/expertslab-peer-$t.gguf MODEL_ARGS="--expert-type $t"
BUILD=/tmp/llama-build REPS=${REPS_LLAMA:-3} timeout $(( $(left) - 170 )) bash "$here/peer-llamacpp.sh" llama "$out/$t" > "$out/$t/llama-run.txt" 2>&1
echo "llama done after $(( $(date +%s) - start )) s"
BUILD=/tmp/llama-build REPS=${REPS_OURS:-3} timeout $(( $(left) - 10 )) bash "$here/peer-llamacpp.sh" ours "$out/$t" > "$out/$t/ours-run.txt" 2>&1
echo "ours done after $(( $(date +%s) - start )) s"
tar -czf "$out/$t.tar.gz" -C "$out" "$t" && rm -rf "${out:?}/$t"
