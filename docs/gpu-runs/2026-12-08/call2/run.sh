#!/usr/bin/env bash
# Call 2 (after call 1 on the same machine): the side by side on the Q4_K_M file (llama.cpp's
# rows, then expertslab's peer rows, three repetitions each), then the decode bench's G rows.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
OUT=$out TYPE=q4_k_m LIMIT=${LIMIT_TYPE:-330} bash "$here/gpu-session-type.sh"
echo "side by side done after $(( $(date +%s) - start )) s"
OUT=$out/g LIMIT=$(( ${LIMIT:-585} - ($(date +%s) - start) )) bash "$here/gpu-session-g.sh"
tar -czf "$out/g.tar.gz" -C "$out" g && rm -rf "${out:?}/g"
echo "all done after $(( $(date +%s) - start )) s"
