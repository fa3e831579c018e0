#!/usr/bin/env bash
# The host path alone on the GPU machine, packed by `scripts/peer-llamacpp.sh pack DIR` beside the
# other session scripts: the host FFN bench (bin/host-ffn: expert_ffn_cold_format and
# expert_ffn_format) and the decode bench's peer rows at 0% of the experts in VRAM (one
# repetition; host only and auto among them) on the generated Q4_K_M file. With BASE=OTHER_DIR
# (another pack's bin/host-ffn and bin/bench-decode, an earlier build), the two builds alternate,
# two rounds; otherwise this build runs twice. About 2.5 minutes.
#   OUT=... [BASE=...] bash DIR/gpu-session-host.sh      writes OUT/host-ffn.txt and OUT/host.txt
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
base=${BASE:-}
mkdir -p "$out"
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
model=/tmp/expertslab-peer-q4_k_m.gguf
py=/opt/torch/.venv/bin/python3; [ -x $py ] || py=python3
[ -f $model ] || PYTHONPATH="$here/py" $py "$here/make-moe-gguf.py" $model --expert-type q4_k_m > $model.txt 2>&1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
builds="$here"; [ -n "$base" ] && builds="$base $here"
for round in 1 2; do
  for b in $builds; do
    echo "=== $b round $round" >> "$out/host-ffn.txt"
    timeout 60 "$b/bin/host-ffn" --bench expert_ffn_cold_format expert_ffn_format >> "$out/host-ffn.txt" 2>&1
    echo "=== $b round $round" >> "$out/host.txt"
    EXPERTSLAB_MODEL=$model EXPERTSLAB_ROWS=peer EXPERTSLAB_REPS=1 EXPERTSLAB_PERCENTS=0 timeout 60 \
      "$b/bin/bench-decode" --bench >> "$out/host.txt" 2>&1
    echo "$b round $round after $(el)"
  done
done
grep -E "===|├─ |╰─ " "$out/host-ffn.txt" | cut -c1-90
grep -E "===|^peer" "$out/host.txt" | grep -E "===|host|auto" | cut -c1-200
