#!/usr/bin/env bash
# The second call of 2026-12-07d: the GPU session (scripts/gpu-session.sh, packed into
# target/peer4 with the host FFN of the previous build beside it as bin/host-ffn-old), then the
# side by side's rows at 0% of the experts in VRAM again with 15 rayon threads (one core left to
# the thread driving the GPU). On the GPU machine: OUT=... bash target/peer4/run-call2.sh.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
LIMIT=470 bash "$here/gpu-session.sh"
echo "session done after $(( $(date +%s) - start )) s"
mkdir -p "$out/c"
(cd "$here/bin" && LD_LIBRARY_PATH=/usr/local/cuda/lib64 RAYON_NUM_THREADS=15 EXPERTSLAB_MODEL=/tmp/expertslab-peer.gguf \
  EXPERTSLAB_ROWS=peer EXPERTSLAB_PERCENTS=0 EXPERTSLAB_REPS=3 timeout $(( 575 - ($(date +%s) - start) )) ./bench-decode --bench) \
  > "$out/c/threads15.txt" 2>&1
echo "15 threads done after $(( $(date +%s) - start )) s"
grep -E "calibration|peer" "$out/c/threads15.txt" | cut -c1-200
tar -czf "$out/c.tar.gz" -C "$out" c && rm -rf "$out/c"
