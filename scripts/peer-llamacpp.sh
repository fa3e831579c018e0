#!/usr/bin/env bash
# expertslab beside llama.cpp on the GPU machine, both reading one generated GGUF model file.
#
#   bash scripts/peer-llamacpp.sh pack [DIR]     here, with Rust and network (default DIR: target/peer)
#     Repacks the llama.cpp tree of the pinned llama-cpp-python sdist (0.3.36, llama.cpp 0c1e570)
#     without models and docs as DIR/llama.cpp.tar.gz (the sdist is 77 MB, over what travels to
#     the GPU machine, which has no zstd), installs PyPI's gguf package (and PyYAML, which it
#     imports) into DIR/py, builds expertslab's GPU binaries into DIR/bin (scripts/gpu-build.sh)
#     and copies this script and scripts/make-moe-gguf.py into DIR.
#   bash DIR/peer-llamacpp.sh build               on the GPU machine
#     Builds llama-bench for sm_90 (CUDA, flash attention off) into DIR/build, kept there.
#   bash DIR/peer-llamacpp.sh run [OUT]           on the GPU machine, after build
#     Writes the model (scripts/make-moe-gguf.py; MODEL_ARGS adds arguments, default: 4 layers of
#     128 BF16 experts of 9 MiB, top-8), runs llama-bench with every expert on the GPU, with the
#     experts of 1..L-1 layers on the CPU (--n-cpu-moe) and with all of them there
#     (-ot exps=CPU), then expertslab's decode benchmark on the same file (EXPERTSLAB_ROWS=peer),
#     and prints one table. Raw output goes to OUT (default: DIR/out).
#   bash DIR/peer-llamacpp.sh all [OUT]           build, then run
#
# llama.cpp's source and binaries are never committed: the tarball and the build stay in DIR,
# which git ignores. Environment: PYTHON (default /opt/torch/.venv/bin/python3 when present),
# REPS (llama-bench repetitions and expertslab's, default 5), TOKENS (llama-bench -n, default 64).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}
[ $# -gt 0 ] && shift

pack() {
  local dir=${1:-target/peer}
  local root
  root=$(cd "$here/.." && pwd)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local tmp
  tmp=$(mktemp -d)
  # The sdist's address on PyPI and its SHA-256 (from https://pypi.org/simple/llama-cpp-python/).
  local url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz
  local sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
  curl -fsSL -o "$tmp/sdist.tar.gz" "$url"
  echo "$sha  $tmp/sdist.tar.gz" | sha256sum -c --quiet
  tar -xzf "$tmp/sdist.tar.gz" -C "$tmp"
  local tree="$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp"
  [ -f "$tree/tools/llama-bench/llama-bench.cpp" ] || { echo "pack: no llama-bench in the sdist" >&2; exit 1; }
  # Vocabularies, docs, media, CI, the Python converter and the tests are not built.
  rm -rf "$tree"/{models,docs,media,.github,.devops,gguf-py,tests,benches}
  tar -czf "$dir/llama.cpp.tar.gz" -C "$(dirname "$tree")" llama.cpp
  rm -rf "$tmp"
  python3 -m pip install --quiet --no-deps --upgrade --target "$dir/py" gguf==0.19.0 pyyaml==6.0.2
  (cd "$root" && bash scripts/gpu-build.sh "$dir/bin" >/dev/null)
  cp "$here/peer-llamacpp.sh" "$here/make-moe-gguf.py" "$dir/"
  du -sh "$dir/llama.cpp.tar.gz" "$dir/py" "$dir/bin"
  echo "packed into $dir; on the GPU machine: bash $dir/peer-llamacpp.sh all"
}

build() {
  local dir=$here
  [ -f "$dir/llama.cpp.tar.gz" ] || { echo "build: $dir/llama.cpp.tar.gz is missing; run pack first" >&2; exit 1; }
  export PATH="/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH"
  if [ -x "$dir/build/bin/llama-bench" ]; then echo "llama-bench already built"; return; fi
  rm -rf "$dir/src" && mkdir -p "$dir/src"
  tar -xzf "$dir/llama.cpp.tar.gz" -C "$dir/src"
  local start=$SECONDS
  cmake -S "$dir/src/llama.cpp" -B "$dir/build" -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=Release >"$dir/build.log" 2>&1
  cmake --build "$dir/build" -j"$(nproc)" --target llama-bench >>"$dir/build.log" 2>&1 ||
    { tail -30 "$dir/build.log" >&2; exit 1; }
  echo "llama-bench built in $((SECONDS - start)) s"
}

run() {
  local dir=$here
  local out=${1:-$dir/out}
  mkdir -p "$out"
  local py=${PYTHON:-}
  [ -n "$py" ] || { [ -x /opt/torch/.venv/bin/python3 ] && py=/opt/torch/.venv/bin/python3 || py=python3; }
  local reps=${REPS:-5} tokens=${TOKENS:-64}
  local model=${MODEL:-/tmp/expertslab-peer.gguf}
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1 || true
  # shellcheck disable=SC2086
  PYTHONPATH="$dir/py" "$py" "$dir/make-moe-gguf.py" "$model" ${MODEL_ARGS:-} | tee "$out/model.txt"
  local layers
  layers=$(sed -n 's/.*: qwen3moe, \([0-9]*\) layers.*/\1/p' "$out/model.txt")
  local bench="$dir/build/bin/llama-bench"
  [ -x "$bench" ] || { echo "run: llama-bench is not built; run build first" >&2; exit 1; }
  local common=(-m "$model" -ngl 99 -p 0 -n "$tokens" -r "$reps" -o json)
  for n in $(seq 0 $((layers - 1))); do
    "$bench" "${common[@]}" -ncmoe "$n" >"$out/llama-ncmoe-$n.json" 2>"$out/llama-ncmoe-$n.log"
    echo "llama.cpp --n-cpu-moe $n done"
  done
  "$bench" "${common[@]}" -ot "exps=CPU" >"$out/llama-all-cpu.json" 2>"$out/llama-all-cpu.log"
  echo "llama.cpp -ot exps=CPU done"
  EXPERTSLAB_MODEL="$model" EXPERTSLAB_ROWS=peer EXPERTSLAB_REPS="$reps" "$dir/bin/bench-decode" --bench \
    >"$out/expertslab.txt" 2>&1
  echo "expertslab done"
  "$py" - "$out" "$layers" "$tokens" <<'EOF' | tee "$out/table.md"
import json, sys
from pathlib import Path
out, layers = Path(sys.argv[1]), int(sys.argv[2])

def tokens_per_s(path):
    runs = json.loads(path.read_text())
    return runs[0]["avg_ts"], runs[0].get("n_threads")

llama = {}
for n in range(layers):
    llama[round(100 * (layers - n) / layers)] = (f"-ncmoe {n}" if n else "(none)", *tokens_per_s(out / f"llama-ncmoe-{n}.json"))
llama[0] = ("-ot exps=CPU", *tokens_per_s(out / "llama-all-cpu.json"))
ours = {}
for line in (out / "expertslab.txt").read_text().splitlines():
    f = line.split("\t")
    if f[0] == "peer":
        miss = "auto" if f[3].endswith("misses auto") else "copy"
        # (trace, percent, way) -> (run, hit rate, µs/token, extra µs, bound µs)
        ours[(f[1], int(f[2]), miss)] = (f[3], float(f[4]), float(f[5]), float(f[6]), float(f[7]))
for line in (out / "expertslab.txt").read_text().splitlines()[:2]:
    print(line)
threads = llama[100][2]
print(f"llama.cpp: llama-bench -ngl 99 -p 0 -n {sys.argv[3] if len(sys.argv) > 3 else 64}, {threads} threads. "
      "expertslab: decode bench, one token per step; extra = ms per token over its own all-resident run; "
      "copy = misses copied, auto = copies and the host CPU side by side; bound = the row's bytes over link + host bandwidth.")
print()
head = ["experts in VRAM", "llama.cpp", "tokens/s", "extra"]
for trace in ("near-uniform", "locality"):
    head += [f"{trace}: hit rate", "copy extra", "auto extra", "bound", "auto / llama.cpp"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
base = 1e3 / llama[100][1]
percents = sorted({*llama, *(p for _, p, _ in ours)}, reverse=True)
for pct in percents:
    row = [f"{pct}%"]
    if pct in llama:
        flags, ts, _ = llama[pct]
        llama_extra = 1e3 / ts - base
        row += [f"`{flags}`", f"{ts:,.0f}", f"{llama_extra:.2f} ms"]
    else:
        llama_extra = None
        row += ["", "", ""]
    for trace in ("near-uniform", "locality"):
        copy, auto = ours.get((trace, pct, "copy")), ours.get((trace, pct, "auto"))
        any_row = auto or copy
        if any_row is None:
            row += ["", "", "", "", ""]
            continue
        ratio = ""
        if auto and llama_extra and llama_extra > 0:
            ratio = f"{auto[3] / 1e3 / llama_extra:.2f}"
        row += [
            f"{100 * any_row[1]:.1f}%",
            f"{copy[3] / 1e3:.2f} ms" if copy else "",
            f"{auto[3] / 1e3:.2f} ms" if auto else "",
            f"{auto[4] / 1e3:.2f} ms" if auto else "",
            ratio,
        ]
    print("| " + " | ".join(row) + " |")
EOF
}

case "$cmd" in
  pack) pack "$@" ;;
  build) build ;;
  run) run "$@" ;;
  all) build && run "$@" ;;
  *) sed -n '2,27p' "$0" >&2; exit 2 ;;
esac
