#!/usr/bin/env bash
# Runs the tests of the core, the std adapter, the C interface's unit tests and the host
# integration tests under Miri
# (undefined behaviour, out-of-bounds, data-race and leak checks). Slow (tens of minutes), so not
# part of scripts/test.sh. Installs the nightly Miri component if missing.
#
# Under cfg(miri) property tests run a handful of cases and the heaviest loops sample; the tests
# that map files are skipped, and the command-line crate (whose tests spawn the binary) is not
# run (Miri has neither). File reads
# (fixtures, golden vectors, fuzz corpora) need isolation off.
#
#   bash scripts/miri.sh            # everything
#   bash scripts/miri.sh unit       # the crates' own unit tests only (a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
rustup +nightly component add miri rust-src >/dev/null
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
# rayon's crossbeam-epoch is known not to fit Stacked Borrows (crossbeam-rs/crossbeam#545) but
# passes under Tree Borrows, which checks the std adapter's tests instead (the host FFN and the
# parallel migrator run on rayon); rayon's pools keep their threads until the process ends, which
# the leak check would report.
rayon_flags="$MIRIFLAGS -Zmiri-tree-borrows -Zmiri-ignore-leaks"
cargo +nightly miri test -p expertslab --lib
MIRIFLAGS="$rayon_flags" cargo +nightly miri test -p expertslab-std --lib
# The C interface's own unit tests: handles, error texts, panics (its C tests need a C compiler).
cargo +nightly miri test -p expertslab-ffi --lib
if [ "${1:-all}" != unit ]; then
    cargo +nightly miri test -p expertslab-tests --tests
    MIRIFLAGS="$rayon_flags" cargo +nightly miri test -p expertslab-std --test '*'
fi
