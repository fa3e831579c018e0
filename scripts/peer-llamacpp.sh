#!/usr/bin/env bash
# expertslab beside llama.cpp on the GPU machine, both reading one generated GGUF model file.
#
#   bash scripts/peer-llamacpp.sh pack [DIR]     here, with Rust and network (default DIR: target/peer)
#     Repacks the llama.cpp tree of the pinned llama-cpp-python sdist (0.3.36, llama.cpp 0c1e570)
#     without models and docs as DIR/llama.cpp.tar.gz (the sdist is 77 MB, over what travels to
#     the GPU machine, which has no zstd), installs PyPI's gguf package (and PyYAML, which it
#     imports) into DIR/py, builds expertslab's GPU binaries into DIR/bin (scripts/gpu-build.sh)
#     and the std adapter's host FFN bench as DIR/bin/host-ffn, the command line as
#     DIR/bin/expertslab,
#     and copies this script, scripts/make-moe-gguf.py and the session scripts
#     (gpu-session.sh, gpu-session-type.sh: the runs of docs/gpu-runs/2026-12-06c; gpu-session-g.sh:
#     the decode bench's G rows; gpu-session-host.sh: the host path alone, optionally beside an
#     earlier pack's binaries) into DIR.
#   bash DIR/peer-llamacpp.sh build               on the GPU machine
#     Builds llama-bench for sm_90 (CUDA, flash attention off) into BUILD (default DIR/build; its
#     log is BUILD.log), kept there.
#   bash DIR/peer-llamacpp.sh llama [OUT]         on the GPU machine, after build
#     Writes the model once (scripts/make-moe-gguf.py into MODEL; MODEL_ARGS adds arguments,
#     default: 4 layers of 128 BF16 experts of 9 MiB, top-8) and runs llama-bench on it with
#     every expert on the GPU, with the experts of 1..L-1 layers on the CPU (--n-cpu-moe) and
#     with all of them there (-ot exps=CPU).
#   bash DIR/peer-llamacpp.sh ours [OUT]          on the GPU machine
#     expertslab's decode benchmark on the same file (EXPERTSLAB_ROWS=peer): each way of
#     serving misses (copy, bus, host, auto) at 75, 50, 25 and 0% of the experts in VRAM.
#   bash DIR/peer-llamacpp.sh table [OUT]         prints (and writes OUT/table.md) the table of
#     both, from OUT's files (anywhere with Python 3).
#   bash DIR/peer-llamacpp.sh share [OUT]         on the GPU machine, after build
#     llama.cpp's all-GPU MoE share beside expertslab's all-resident time, per expert type in
#     TYPES (default "q4_k bf16 q8_0"): files of the default shape with expert FFN 768 and 1536,
#     llama-bench on each with every layer on the GPU, the share t1536 - t768 (the time 768 more
#     of width adds, taken as linear in the width over that range, where the experts' reads
#     dominate: llama.cpp's MoE costs that do not grow with the width are left out), and
#     expertslab's all-resident row (bench-decode) on the 768 file; the table goes to
#     OUT/share.md (share-table [OUT] prints it again).
#   bash DIR/peer-llamacpp.sh run [OUT]           llama, ours, table
#   bash DIR/peer-llamacpp.sh all [OUT]           build, then run
# Raw output goes to OUT (default: DIR/out).
#
# llama.cpp's source and binaries are never committed: the tarball and the build stay in DIR,
# which git ignores. Environment: PYTHON (default /opt/torch/.venv/bin/python3 when present),
# REPS (llama-bench repetitions and expertslab's, default 5), TOKENS (llama-bench -n, default 64),
# MODEL (default /tmp/expertslab-peer.gguf), BUILD (see build).
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
  # The std adapter's host FFN bench, which gpu-session.sh runs on the GPU machine's host.
  local ffn
  ffn=$(cd "$root" && cargo bench -p expertslab-std --bench ffn --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])' | tail -1)
  cp "$ffn" "$dir/bin/host-ffn" && strip "$dir/bin/host-ffn" 2>/dev/null || true
  # The command line, whose CPU demo runs the host FFN over a model file with no GPU.
  (cd "$root" && cargo build --release --quiet -p expertslab-cli)
  cp "$root/target/release/expertslab" "$dir/bin/expertslab" && strip "$dir/bin/expertslab" 2>/dev/null || true
  cp "$here/peer-llamacpp.sh" "$here/make-moe-gguf.py" "$here/gpu-session.sh" "$here/gpu-session-type.sh" \
    "$here/gpu-session-g.sh" "$here/gpu-session-host.sh" "$dir/"
  du -sh "$dir/llama.cpp.tar.gz" "$dir/py" "$dir/bin"
  echo "packed into $dir; on the GPU machine: bash $dir/peer-llamacpp.sh all"
}

build() {
  local dir=$here
  [ -f "$dir/llama.cpp.tar.gz" ] || { echo "build: $dir/llama.cpp.tar.gz is missing; run pack first" >&2; exit 1; }
  export PATH="/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH"
  if [ -x "$build_dir/bin/llama-bench" ]; then echo "llama-bench already built"; return; fi
  local src="$build_dir.src"
  rm -rf "$src" && mkdir -p "$src"
  tar -xzf "$dir/llama.cpp.tar.gz" -C "$src"
  local start=$SECONDS
  cmake -S "$src/llama.cpp" -B "$build_dir" -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=Release >"$build_dir.log" 2>&1
  cmake --build "$build_dir" -j"$(nproc)" --target llama-bench >>"$build_dir.log" 2>&1 ||
    { tail -30 "$build_dir.log" >&2; exit 1; }
  echo "llama-bench built in $((SECONDS - start)) s"
}

# The model file both sides read, written once (make-moe-gguf.py); its line goes into OUT.
model_file() {
  local out=$1
  if [ ! -f "$model" ]; then
    # shellcheck disable=SC2086
    PYTHONPATH="$here/py" "$py" "$here/make-moe-gguf.py" "$model" ${MODEL_ARGS:-} >"$model.txt"
  fi
  cp "$model.txt" "$out/model.txt"
  cat "$out/model.txt"
}

layers_of() { sed -n 's/.*: qwen3moe, \([0-9]*\) layers.*/\1/p' "$1/model.txt"; }

llama() {
  local out=$1
  mkdir -p "$out"
  model_file "$out"
  local layers
  layers=$(layers_of "$out")
  local bench="$build_dir/bin/llama-bench"
  [ -x "$bench" ] || { echo "llama: llama-bench is not built; run build first" >&2; exit 1; }
  local common=(-m "$model" -ngl 99 -p 0 -n "$tokens" -r "$reps" -o json)
  for n in $(seq 0 $((layers - 1))); do
    "$bench" "${common[@]}" -ncmoe "$n" >"$out/llama-ncmoe-$n.json" 2>"$out/llama-ncmoe-$n.log"
    echo "llama.cpp --n-cpu-moe $n done"
  done
  "$bench" "${common[@]}" -ot "exps=CPU" >"$out/llama-all-cpu.json" 2>"$out/llama-all-cpu.log"
  echo "llama.cpp -ot exps=CPU done"
}

ours() {
  local out=$1
  mkdir -p "$out"
  model_file "$out"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1 || true
  EXPERTSLAB_MODEL="$model" EXPERTSLAB_ROWS=peer EXPERTSLAB_REPS="$reps" "$here/bin/bench-decode" --bench \
    >"$out/expertslab.txt" 2>&1
  echo "expertslab done"
}

share() {
  local out=$1
  mkdir -p "$out"
  local bench="$build_dir/bin/llama-bench"
  [ -x "$bench" ] || { echo "share: llama-bench is not built; run build first" >&2; exit 1; }
  local t f m
  for t in ${TYPES:-q4_k bf16 q8_0}; do
    for f in 768 1536; do
      m=/tmp/expertslab-share-$t-$f.gguf
      [ -f "$m" ] || PYTHONPATH="$here/py" "$py" "$here/make-moe-gguf.py" "$m" --expert-type "$t" --expert-ffn "$f" \
        >"$out/model-$t-$f.txt"
      "$bench" -m "$m" -ngl 99 -p 0 -n "$tokens" -r "$reps" -o json >"$out/llama-$t-$f.json" 2>"$out/llama-$t-$f.log"
      echo "llama.cpp $t, expert FFN $f done"
    done
    EXPERTSLAB_MODEL=/tmp/expertslab-share-$t-768.gguf EXPERTSLAB_ROWS=peer EXPERTSLAB_PERCENTS=100 \
      EXPERTSLAB_REPS="$reps" "$here/bin/bench-decode" --bench >"$out/expertslab-$t.txt" 2>&1
    echo "expertslab $t done"
  done
  share_table "$out"
}

share_table() {
  local out=$1
  "$py" - "$out" "${TYPES:-q4_k bf16 q8_0}" <<'EOF' | tee "$out/share.md"
import json, sys
from pathlib import Path
out, types = Path(sys.argv[1]), sys.argv[2].split()
# The share of expert FFN 768: t(768 + d) - t(768) for the other width d over 768 (1536; 256,
# as a call of 2026-12-07 ran it, scaled by 768 / 512).
widths = sorted(int(p.stem.rsplit("-", 1)[1]) for p in out.glob(f"llama-{types[0]}-*.json"))
other = next(w for w in widths if w != 768)
print(f"| experts | llama.cpp, FFN 768 | FFN {other} | llama.cpp's MoE share at 768 | expertslab all resident | expertslab / llama.cpp |")
print("|---|---|---|---|---|---|")
for t in types:
    us = {f: 1e6 / json.loads((out / f"llama-{t}-{f}.json").read_text())[0]["avg_ts"] for f in (768, other)}
    share = (us[max(768, other)] - us[min(768, other)]) * 768 / abs(other - 768)
    rows = (line.split("\t") for line in (out / f"expertslab-{t}.txt").read_text().splitlines())
    ours = next(float(f[5]) for f in rows if f[0] == "peer" and f[1] == "near-uniform" and f[3] == "all resident")
    print(f"| {t} | {us[768]:.1f} µs/token | {us[other]:.1f} | {share:.1f} µs | {ours:.1f} µs | {ours / share:.2f} |")
EOF
}

table() {
  local out=$1
  "$py" - "$out" "$(layers_of "$out")" "$tokens" <<'EOF' | tee "$out/table.md"
import json, sys
from pathlib import Path
out, layers, tokens = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
WAYS = ("copy", "bus", "host", "auto")

def tokens_per_s(path):
    runs = json.loads(path.read_text())
    return runs[0]["avg_ts"], runs[0].get("n_threads")

llama = {}
for n in range(layers):
    llama[round(100 * (layers - n) / layers)] = (f"-ncmoe {n}" if n else "(none)", *tokens_per_s(out / f"llama-ncmoe-{n}.json"))
llama[0] = ("-ot exps=CPU", *tokens_per_s(out / "llama-all-cpu.json"))
ours = {}
text = (out / "expertslab.txt").read_text().splitlines()
for line in text:
    f = line.split("\t")
    if f[0] == "peer":
        way = f[3].rsplit("misses ", 1)[1] if "misses " in f[3] else "resident"
        # (trace, percent, way) -> (run, hit rate, µs/token, extra µs, bound µs, predicted µs/token, host µs/token)
        extra = [float(v) for v in f[8:10]] + [float("nan")] * (10 - len(f))
        ours[(f[1], int(f[2]), way)] = (f[3], float(f[4]), float(f[5]), float(f[6]), float(f[7]), *extra)
for line in text:
    if line.startswith("peer"):
        break
    print(line)
base = 1e3 / llama[100][1]
print()
print(f"llama.cpp: llama-bench -ngl 99 -p 0 -n {tokens}, {llama[100][2]} threads, {1e3 / base:,.0f} tokens/s with every "
      "expert on the GPU. expertslab: decode bench, one token per step; extra = ms per token over its own all-resident "
      "run; copy = misses copied, bus = read over the bus, host = computed on the host CPU, auto = copies and the host "
      "side by side; bound = the auto row's bytes over link + host bandwidth; predicted = the replay's time per token "
      "for the auto row over its measured time; host = the auto row's host time per token.")
for trace in ("near-uniform", "locality"):
    print()
    print(f"**{trace}**")
    print()
    head = ["experts in VRAM", "llama.cpp", "extra", "hit rate", *(f"{w} extra" for w in WAYS), "bound",
            "auto / best way", "auto / llama.cpp", "auto run", "predicted / measured", "host"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    percents = sorted({*llama, *(p for t, p, _ in ours if t == trace)}, reverse=True)
    for pct in percents:
        row = [f"{pct}%"]
        llama_extra = None
        if pct in llama:
            flags, ts, _ = llama[pct]
            llama_extra = 1e3 / ts - base
            row += [f"`{flags}`", f"{llama_extra:.2f} ms"]
        else:
            row += ["", ""]
        rows = {w: ours.get((trace, pct, w)) for w in WAYS}
        any_row = next((r for r in rows.values() if r), ours.get((trace, pct, "resident")))
        row.append(f"{100 * any_row[1]:.1f}%" if any_row else "")
        row += [f"{r[3] / 1e3:.2f} ms" if r else "" for r in rows.values()]
        auto = rows["auto"]
        singles = [r[2] for w, r in rows.items() if r and w != "auto"]
        row.append(f"{auto[4] / 1e3:.2f} ms" if auto else "")
        row.append(f"{auto[2] / min(singles):.3f}" if auto and singles else "")
        row.append(f"{auto[3] / 1e3 / llama_extra:.2f}" if auto and llama_extra and llama_extra > 0 else "")
        row.append(auto[0].split(", misses")[0] if auto else "")
        row.append(f"{auto[5] / auto[2]:.2f}" if auto and auto[5] == auto[5] else "")
        row.append(f"{auto[6] / 1e3:.2f} ms" if auto and auto[6] == auto[6] else "")
        print("| " + " | ".join(row) + " |")
EOF
}

py=${PYTHON:-}
[ -n "$py" ] || { [ -x /opt/torch/.venv/bin/python3 ] && py=/opt/torch/.venv/bin/python3 || py=python3; }
reps=${REPS:-5}
tokens=${TOKENS:-64}
model=${MODEL:-/tmp/expertslab-peer.gguf}
build_dir=${BUILD:-$here/build}
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

case "$cmd" in
  pack) pack "$@" ;;
  build) build ;;
  llama) llama "${1:-$here/out}" ;;
  ours) ours "${1:-$here/out}" ;;
  table) table "${1:-$here/out}" ;;
  share) share "${1:-$here/out}" ;;
  share-table) share_table "${1:-$here/out}" ;;
  run) llama "${1:-$here/out}" && ours "${1:-$here/out}" && table "${1:-$here/out}" ;;
  all) build && llama "${1:-$here/out}" && ours "${1:-$here/out}" && table "${1:-$here/out}" ;;
  *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
