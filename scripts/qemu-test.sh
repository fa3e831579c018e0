#!/usr/bin/env bash
# The Cortex-M4 lane: builds the test firmware in tests/qemu for thumbv7em-none-eabihf and runs it
# on QEMU's mps2-an386, once with semihosting text and once with defmt logs decoded by defmt-print,
# then runs the firmware example. Installs what is missing when it can (qemu-system-arm through
# apt-get as root, defmt-print through cargo) and names what is missing otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

QEMU=(qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic
      -semihosting-config enable=on,target=native)
ELF=target/thumbv7em-none-eabihf/release

missing() {
  printf 'error: %s is missing and could not be installed: %s\n' "$1" "$2" >&2
  exit 1
}

if ! command -v qemu-system-arm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-arm >/dev/null \
      || missing qemu-system-arm "apt-get install qemu-system-arm failed"
  else
    missing qemu-system-arm "install Debian's qemu-system-arm package (needs root and apt-get)"
  fi
fi
if ! command -v defmt-print >/dev/null; then
  cargo install defmt-print --version 1.2.0 --locked --quiet \
    || missing defmt-print "cargo install defmt-print failed"
fi
rustup target add thumbv7em-none-eabihf >/dev/null

echo "--- test firmware, semihosting text"
(cd tests/qemu && cargo build --release --locked --quiet && "${QEMU[@]}" -kernel "$ELF/expertslab-qemu")

echo "--- test firmware, defmt over semihosting, decoded by defmt-print"
(cd tests/qemu && cargo build --release --locked --quiet --features defmt \
  && "${QEMU[@]}" -kernel "$ELF/expertslab-qemu" | defmt-print -e "$ELF/expertslab-qemu")

echo "--- firmware example"
(cd examples/firmware && cargo build --release --locked --quiet \
  && "${QEMU[@]}" -kernel "$ELF/expertslab-firmware-example")
