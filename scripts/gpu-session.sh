#!/usr/bin/env bash
# One GPU call, phase by phase, each phase's files packed as it ends (a timeout keeps what ran):
# llama.cpp built while the GPU lane's tests run; the floor on an idle host; llama-bench and
# expertslab's rows on the BF16 file, as time allows. Packed beside peer-llamacpp.sh by its
# `pack` step; on the GPU machine: `OUT=... bash DIR/gpu-session.sh` (OUT gets a.tar.gz and
# b.tar.gz). Then, on the same warm machine, `TYPE=q8_0 bash DIR/gpu-session-type.sh` (or
# q4_k_m) for a quantized file. LIMIT: seconds the call may take (default 585).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
left() { echo $(( ${LIMIT:-585} - ($(date +%s) - start) )); }
mkdir -p "$out/a"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/a/gpu.txt" 2>&1
lscpu > "$out/a/lscpu.txt" 2>&1
(BUILD=/tmp/llama-build bash "$here/peer-llamacpp.sh" build > "$out/a/llama-build.txt" 2>&1; echo "build rc $? after $(( $(date +%s) - start )) s" >> "$out/a/llama-build.txt") &
bpid=$!
(cd "$here/bin" && timeout 300 bash gpu-test.sh) > "$out/a/gpu-tests.txt" 2>&1
echo "tests done after $(( $(date +%s) - start )) s" | tee -a "$out/a/gpu-tests.txt"
tail -2 "$out/a/gpu-tests.txt"
wait $bpid
tail -1 "$out/a/llama-build.txt"
cp /tmp/llama-build.log "$out/a/" 2>/dev/null
# The floor on an idle host (the build is done): launches are host work.
(cd "$here/bin" && LD_LIBRARY_PATH=/usr/local/cuda/lib64 timeout 120 ./bench-floor --bench) > "$out/a/floor.txt" 2>&1
echo "floor done after $(( $(date +%s) - start )) s"; cat "$out/a/floor.txt"
# The host FFN alone on this host (std adapter's `ffn` bench), when packed as bin/host-ffn; an
# older build packed beside it as bin/host-ffn-old alternates with it, two rounds.
if [ -x "$here/bin/host-ffn" ]; then
  rounds="host-ffn"
  [ -x "$here/bin/host-ffn-old" ] && rounds="host-ffn-old host-ffn host-ffn-old host-ffn"
  for b in $rounds; do
    echo "=== $b"
    (cd "$here/bin" && timeout 60 "./$b" --bench --sample-count 20 "expert_ffn$|one_pair|format|cold")
  done > "$out/a/host-ffn.txt" 2>&1
  grep -E "===|instruction|bf16|q8_0|q4_K|q6_K|one_pair|cold|├─ [0-9]|╰─ [0-9]" "$out/a/host-ffn.txt" | head -80
fi
tar -czf "$out/a.tar.gz" -C "$out" a && rm -rf "$out/a"
mkdir -p "$out/b"
BUILD=/tmp/llama-build REPS=3 timeout $(( $(left) - 200 )) bash "$here/peer-llamacpp.sh" llama "$out/b" > "$out/b/llama-run.txt" 2>&1
echo "llama done after $(( $(date +%s) - start )) s"
BUILD=/tmp/llama-build REPS=3 timeout $(( $(left) - 10 )) bash "$here/peer-llamacpp.sh" ours "$out/b" > "$out/b/ours-run.txt" 2>&1
echo "ours done after $(( $(date +%s) - start )) s (rc $?)"
tar -czf "$out/b.tar.gz" -C "$out" b && rm -rf "$out/b"
