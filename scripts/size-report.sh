#!/usr/bin/env bash
# Size report of a minimal Cortex-M4 firmware that uses layout, pool and migration with TIDE
# placement (tests/qemu/src/bin/minimal.rs) at opt-level "s" with LTO, beside the same runtime
# without the core (baseline.rs): section sizes from the ELF and the core's share (the difference).
#
# Usage: size-report.sh [CARGO BUILD ARGUMENTS...]. Both firmwares are built without the qemu
# crate's default features, so the core is built without its `demand` feature (the demand
# policies, the prefetch hook and the shared slot pool): the share of a TIDE-only firmware. Extra
# arguments go to `cargo build`, for example `--features demand` (every policy linked, as a
# firmware that picks its policy at run time has them) or `--features expertslab/heap-select`.
set -euo pipefail
cd "$(dirname "$0")/../tests/qemu"

rustup target add thumbv7em-none-eabihf >/dev/null
rustup component add llvm-tools >/dev/null
SIZE="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-size"
cargo build --release --locked --quiet --no-default-features "$@" --bin minimal --bin baseline

sections() { "$SIZE" -A "target/thumbv7em-none-eabihf/release/$1" | awk -v s="$2" '$1 == s { print $2 }'; }
echo "built with: cargo build --release --no-default-features${*:+ $*} (in tests/qemu)"
printf '%-8s %10s %10s %10s %10s\n' firmware .text .rodata .data .bss
for bin in minimal baseline; do
  printf '%-8s %10s %10s %10s %10s\n' "$bin" "$(sections $bin .text)" "$(sections $bin .rodata)" \
    "$(sections $bin .data)" "$(sections $bin .bss)"
done
text=$(( $(sections minimal .text) - $(sections baseline .text) ))
rodata=$(( $(sections minimal .rodata) - $(sections baseline .rodata) ))
echo "core's share (minimal - baseline): .text $text bytes, .rodata $rodata bytes (includes the example's weights)"
