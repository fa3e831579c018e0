#!/usr/bin/env bash
# Runs every test of the project on a fresh machine, installing what it needs first.
# Used by .ci/run; run it from anywhere: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components and targets"
rustup component add rustfmt clippy >/dev/null
rustup target add thumbv7em-none-eabihf riscv32imac-unknown-none-elf >/dev/null

step "format"
cargo fmt --all --check
for project in tests/qemu examples/firmware fuzz; do (cd "$project" && cargo fmt --check); done

step "clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "clippy of the firmware (warnings denied)"
(cd tests/qemu && cargo clippy --release --locked -- -D warnings \
  && cargo clippy --release --locked --features defmt -- -D warnings \
  && cargo clippy --release --locked --no-default-features -- -D warnings \
  && cargo clippy --release --locked --target riscv32imac-unknown-none-elf -- -D warnings)
(cd examples/firmware && cargo clippy --release --locked -- -D warnings)

step "NVRTC for the CUDA kernels' compile test (PyPI's nvidia-cuda-nvrtc; no GPU or CUDA toolkit needed)"
# The expertslab-cuda tests compile the kernels with NVRTC and fail when it is missing. The wheel
# (58 MB download) is installed once under target/; cudarc loads libnvrtc.so.13 from the path.
nvrtc_lib="$PWD/target/nvrtc/nvidia/cu13/lib"
if [ ! -e "$nvrtc_lib/libnvrtc.so.13" ]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target target/nvrtc 'nvidia-cuda-nvrtc==13.0.88' \
    || { echo "could not install nvidia-cuda-nvrtc 13.0.88 from PyPI (the kernel compile test needs it)" >&2; exit 1; }
fi
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step "host tests (with the C interface's host C test and the kernels' host check, which need the system C and C++ compilers)"
if ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc g++ libc6-dev >/dev/null
  fi
  command -v cc >/dev/null || { echo "no C compiler (cc) for the C interface's host test: install Debian's gcc" >&2; exit 1; }
  command -v c++ >/dev/null || { echo "no C++ compiler (c++) for the kernels' host check: install Debian's g++" >&2; exit 1; }
fi
EXPERTSLAB_REQUIRE_CC=1 cargo test --workspace --locked

step "core tests without the demand feature (demand policies must be refused)"
cargo test -p expertslab --no-default-features --locked

step "core for thumbv7em-none-eabihf: with and without demand, defmt and heap-select (warnings denied)"
for features in "" defmt heap-select defmt,heap-select; do
  cargo clippy -p expertslab --target thumbv7em-none-eabihf --locked --features "$features" -- -D warnings
  cargo clippy -p expertslab --target thumbv7em-none-eabihf --locked --no-default-features --features "$features" \
    -- -D warnings
done

step "the C interface's static library for thumbv7em-none-eabihf (built and linted; the QEMU C lane links and runs it)"
cargo rustc -p expertslab-ffi --lib --target thumbv7em-none-eabihf --locked --crate-type staticlib
cargo clippy -p expertslab-ffi --lib --target thumbv7em-none-eabihf --locked -- -D warnings
cargo clippy -p expertslab-ffi --lib --target thumbv7em-none-eabihf --locked --no-default-features -- -D warnings

step "the C interface without the demand feature (demand policies must be refused)"
cargo test -p expertslab-ffi --lib --no-default-features --locked

step "docs (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "benchmarks build"
cargo bench --workspace --no-run --locked

step "QEMU: Cortex-M4 (mps2-an386) test firmware, plain and defmt, and the firmware example; RISC-V (virt) test firmware; the C firmware (installs gcc-arm-none-eabi)"
bash scripts/qemu-test.sh
