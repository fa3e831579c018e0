#!/usr/bin/env bash
# One short GPU call (no llama.cpp): the GPU lane's tests, the host FFN of two builds on the GPU
# machine's host, then expertslab's side-by-side rows on a generated model (each way of serving
# misses, auto with split misses beside auto with whole experts only, in the same run, so under
# one calibration). Packed next to the binaries as target/peer2/run-short.sh; on the GPU
# machine: OUT=... LIMIT=seconds bash target/peer2/run-short.sh. Each phase's files are packed as
# it ends (a timeout keeps what ran).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
left() { echo $(( ${LIMIT:-400} - ($(date +%s) - start) )); }
mkdir -p "$out/s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/s/gpu.txt" 2>&1
(cd "$here/bin" && timeout 150 bash gpu-test.sh) > "$out/s/gpu-tests.txt" 2>&1
echo "tests done after $(( $(date +%s) - start )) s"; tail -2 "$out/s/gpu-tests.txt"
for b in host-ffn-old host-ffn host-ffn-old host-ffn; do
  echo "=== $b"
  (cd "$here/bin" && timeout 30 "./$b" --bench --sample-count 20 "one_pair|cold|format")
done > "$out/s/host-ffn.txt" 2>&1
echo "host FFN done after $(( $(date +%s) - start )) s"
grep -E "===|instruction|one_pair|├─ [0-9]|╰─ [0-9]|bf16|q8_0" "$out/s/host-ffn.txt" | head -40
tar -czf "$out/s1.tar.gz" -C "$out" s
(cd "$here/bin" && LD_LIBRARY_PATH=/usr/local/cuda/lib64 EXPERTSLAB_ROWS=peer EXPERTSLAB_REPS=2 \
  timeout $(( $(left) - 15 )) ./bench-decode --bench) > "$out/s/decode.txt" 2>&1
echo "decode rows done after $(( $(date +%s) - start )) s (rc $?)"
grep -E "calibration|near-uniform|locality" "$out/s/decode.txt" | cut -c1-160 | head -50
tar -czf "$out/s.tar.gz" -C "$out" s && rm -rf "$out/s" "$out/s1.tar.gz"
