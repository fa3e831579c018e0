#!/usr/bin/env bash
# Runs every test of the project on a fresh machine, installing what it needs first.
# Used by .ci/run; run it from anywhere: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components and targets"
rustup component add rustfmt clippy >/dev/null
rustup target add thumbv7em-none-eabihf >/dev/null

step "format"
cargo fmt --all --check

step "clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "host tests"
cargo test --workspace --locked

step "core for thumbv7em-none-eabihf, without and with defmt"
cargo build -p expertslab --target thumbv7em-none-eabihf --locked
cargo build -p expertslab --target thumbv7em-none-eabihf --features defmt --locked

step "docs (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "benchmarks build"
cargo bench --workspace --no-run --locked
