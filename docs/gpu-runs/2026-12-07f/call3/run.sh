#!/usr/bin/env bash
# Call C: llama.cpp's all-GPU MoE share beside expertslab's all-resident floor, on the same
# files. llama-bench (every layer on the GPU) on files of the default shape (hidden 2048, 128
# experts, top-8, 4 layers) with expert FFN widths 768 and 256, per expert type; the MoE share
# at 768 is (t768 - t256) * 768 / 512 (the time that grows with the experts' width, taken as
# linear in it). expertslab's all-resident row on the 768 files (bench-decode, EXPERTSLAB_MODEL).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
mkdir -p "$out/c"
py=/opt/torch/.venv/bin/python3; [ -x $py ] || py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/c/gpu.txt" 2>&1
(BUILD=/tmp/llama-build bash "$here/peer-llamacpp.sh" build > "$out/c/llama-build.txt" 2>&1; echo "build rc $? after $(el)" >> "$out/c/llama-build.txt") &
bpid=$!
TYPES=${TYPES:-q4_k bf16 q8_0}
for t in $TYPES; do
  for f in 768 256; do
    PYTHONPATH="$here/py" $py "$here/make-moe-gguf.py" /tmp/m-$t-$f.gguf --expert-type $t --expert-ffn $f > "$out/c/model-$t-$f.txt" 2>&1 &
  done
done
wait $(jobs -p | grep -v "^$bpid$") 2>/dev/null
echo "models written after $(el)"; cat "$out/c"/model-*.txt | head -20
wait $bpid; tail -1 "$out/c/llama-build.txt"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
for t in $TYPES; do
  for f in 768 256; do
    timeout 120 /tmp/llama-build/bin/llama-bench -m /tmp/m-$t-$f.gguf -ngl 99 -p 0 -n 64 -r 3 -o json > "$out/c/llama-$t-$f.json" 2> "$out/c/llama-$t-$f.log"
    echo "llama $t $f: $(grep -o '"avg_ts": [0-9.]*' "$out/c/llama-$t-$f.json") after $(el)"
  done
done
cd "$here/bin"
for t in $TYPES; do
  EXPERTSLAB_MODEL=/tmp/m-$t-768.gguf EXPERTSLAB_ROWS=peer EXPERTSLAB_PERCENTS=100 EXPERTSLAB_REPS=5 timeout 120 ./bench-decode --bench > "$out/c/expertslab-$t.txt" 2>&1
  echo "expertslab $t rc $? after $(el)"; grep -E "all resident" "$out/c/expertslab-$t.txt"
done
for b in host-ffn-before host-ffn host-ffn-before host-ffn; do
  echo "=== $b"
  timeout 40 "./$b" --bench --sample-count 20 "format|one_pair"
done > "$out/c/host-ffn.txt" 2>&1
grep -E "===|q8_0|q4_K|q6_K" "$out/c/host-ffn.txt" | head -24
echo "host ffn done after $(el)"
for round in 1 2; do
  for v in main sd; do
    [ $(( $(date +%s) - start )) -lt 470 ] || break 2
    if [ $v = main ]; then k=; else k=variants/$v.cu; fi
    echo "=== $v round $round" >> "$out/c/floor.txt"
    env ${k:+EXPERTSLAB_CUDA_KERNELS=$k} timeout 60 ./bench-floor --bench >> "$out/c/floor.txt" 2>&1
    echo "=== $v round $round"; grep -A5 "^format" "$out/c/floor.txt" | tail -4
  done
done
echo "all done after $(el)"
