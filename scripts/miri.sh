#!/usr/bin/env bash
# Runs the core's and the std adapter's unit tests under Miri (undefined behaviour, out-of-bounds
# and leak checks). Slow (minutes), so not part of scripts/test.sh. Installs the nightly Miri
# component if missing. The heaviest loops sample fewer cases under cfg(miri); the tests that
# map or touch files are skipped (Miri has no mmap).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup +nightly component add miri rust-src >/dev/null
cargo +nightly miri test -p expertslab --lib
cargo +nightly miri test -p expertslab-std --lib
