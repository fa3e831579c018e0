#!/usr/bin/env bash
# Call 1: the machine; llama.cpp built in the background; the Q4_K_M file written beside it;
# test-gpu_ffn with this build's kernels and the previous kernels (old: expected to fail the
# Q6_K down of FFN 1536); then, the CPU quiet, the host path on the Q4_K_M file: the host FFN
# bench, the CPU demo with no slots (16 and 8 threads), the decode bench's rows at 0% with 15
# and 8 host threads; then bench-floor once.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?}
start=$(date +%s)
el() { echo "$(( $(date +%s) - start )) s"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu; cat /sys/kernel/mm/transparent_hugepage/enabled; df -h /tmp; } > "$out/sys.txt" 2>&1
head -1 "$out/sys.txt"; grep -E "^CPU\(s\)|Thread|Core|Socket|Model name|NUMA node" "$out/sys.txt"
( BUILD=/tmp/llama-build timeout 330 bash "$here/peer-llamacpp.sh" build > "$out/llama-build.txt" 2>&1; echo "llama build rc $?" >> "$out/llama-build.txt" ) &
build=$!
model=/tmp/expertslab-peer-q4_k_m.gguf
py=/opt/torch/.venv/bin/python3; [ -x $py ] || py=python3
PYTHONPATH="$here/py" $py "$here/make-moe-gguf.py" $model --expert-type q4_k_m > $model.txt 2>&1
echo "model written after $(el)"; cat $model.txt | head -3
cd "$here/bin"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
for k in main old; do
  if [ $k = main ]; then kv=; else kv=variants/$k.cu; fi
  env ${kv:+EXPERTSLAB_CUDA_KERNELS=$kv} timeout 150 ./test-gpu_ffn --include-ignored --test-threads=1 > "$out/gpu-ffn-$k.txt" 2>&1
  echo "gpu_ffn $k: rc $? after $(el)"; grep -E "test result|FAILED|panicked" "$out/gpu-ffn-$k.txt" | head -4
done
wait $build; echo "llama build done after $(el)"; tail -1 "$out/llama-build.txt"
# The host path, nothing else running.
timeout 60 ./host-ffn --bench expert_ffn_format expert_ffn_cold read_cold > "$out/host-ffn.txt" 2>&1
grep -E "q4_K|q8_0|├─ [0-9]|╰─ [0-9]" "$out/host-ffn.txt" | head -12
for t in 16 8; do
  echo "=== cpu demo, $t threads" >> "$out/host.txt"
  RAYON_NUM_THREADS=$t timeout 60 ./expertslab demo --model $model --slots 0 --steps 100 >> "$out/host.txt" 2>&1
done
echo "cpu demo done after $(el)"; grep -iE "===|token" "$out/host.txt" | head -12
for t in 15 8; do
  echo "=== decode bench, 0%, $t host threads" >> "$out/host.txt"
  EXPERTSLAB_HOST_THREADS=$t EXPERTSLAB_MODEL=$model EXPERTSLAB_ROWS=peer EXPERTSLAB_REPS=1 EXPERTSLAB_PERCENTS=0 timeout 100 ./bench-decode --bench >> "$out/host.txt" 2>&1
  echo "decode $t done after $(el)"
done
grep -E "===|calibration|host FFN|^peer" "$out/host.txt" | cut -c1-220
timeout 80 ./bench-floor --bench > "$out/floor.txt" 2>&1
grep -A5 "^format" "$out/floor.txt" | tail -5
echo "all done after $(el)"
