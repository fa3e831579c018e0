#!/usr/bin/env bash
# The decode bench's G rows (G2, G3, G4: every expert resident, streaming, bus reads, then LRU,
# LRU with speculative copies, TIDE, decay and the tune pick at 25% and 50% of the experts in
# slots, on the locality and near-uniform traces) on the GPU machine, packed by
# `scripts/peer-llamacpp.sh pack` beside gpu-session.sh. `OUT=... bash DIR/gpu-session-g.sh`
# writes OUT/g.txt. REPS: repetitions per row (default 3). LIMIT: seconds the call may take
# (default 585).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
mkdir -p "$out"
(cd "$here/bin" && LD_LIBRARY_PATH=/usr/local/cuda/lib64 EXPERTSLAB_REPS=${REPS:-3} timeout $(( ${LIMIT:-585} - 15 )) ./bench-decode --bench) > "$out/g.txt" 2>&1
echo "rc $?" >> "$out/g.txt"
grep -E "speculative|\(iv\) lru |G2|G4|rc " "$out/g.txt" | head -40
