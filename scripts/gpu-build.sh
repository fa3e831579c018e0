#!/usr/bin/env bash
# Builds the GPU lane's binaries here (no Rust toolchain is needed on the GPU machine) and
# copies them, with scripts/gpu-test.sh, into DIR:
#   test-<name>   every test binary of expertslab-cuda (unit, integration, GPU), release build
#   bench-<name>  every benchmark binary of expertslab-cuda
# Then, on the GPU machine, from DIR:  bash gpu-test.sh [BENCH...]   (see gpu-test.sh).
# Usage: scripts/gpu-build.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/gpu-build.sh DIR}
cd "$(dirname "$0")/.."
mkdir -p "$dir"
rm -f "$dir"/test-* "$dir"/bench-*

# Prints "name<TAB>path" for every executable cargo reports in its JSON messages whose target
# kind is one of the arguments.
executables() {
  python3 -c '
import json, sys
kinds = set(sys.argv[1:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and kinds & set(m["target"]["kind"]):
        print(m["target"]["name"] + "\t" + m["executable"])
' "$@"
}

# kernel_host compiles the kernel source with the host's C++ compiler from the checkout: a host
# check, run by the test command, not on the GPU machine.
cargo test -p expertslab-cuda --release --no-run --message-format=json 2>/dev/null | executables lib test |
  while IFS=$'\t' read -r name path; do [ "$name" = kernel_host ] || cp "$path" "$dir/test-$name"; done
cargo bench -p expertslab-cuda --no-run --message-format=json 2>/dev/null | executables bench |
  while IFS=$'\t' read -r name path; do cp "$path" "$dir/bench-$name"; done
# Debug info is not needed there, and the folder travels (64 MiB at most).
if command -v strip >/dev/null; then strip "$dir"/test-* "$dir"/bench-* 2>/dev/null || true; fi
cp scripts/gpu-test.sh "$dir/"
ls -l "$dir"
du -sh "$dir"
