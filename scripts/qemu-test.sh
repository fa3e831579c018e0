#!/usr/bin/env bash
# The Cortex-M4 lane: builds the test firmware in tests/qemu for thumbv7em-none-eabihf and runs it
# on QEMU's mps2-an386, once with semihosting text and once with defmt logs decoded by defmt-print,
# then runs the firmware example. Every run is killed after 120 s and counts as failed. Two
# firmwares fail on purpose, one with a HardFault and one by hanging: the lane checks that each is
# caught and reported, and fails if either passes. Installs what is missing when it can
# (qemu-system-arm through apt-get as root, defmt-print through cargo) and names what is missing
# otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

QEMU=(qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic
      -semihosting-config enable=on,target=native)
ELF=target/thumbv7em-none-eabihf/release
TIMEOUT_S=120

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

# run_firmware [-t SECONDS] [-d] ELF: runs ELF on QEMU and returns the firmware's exit status
# (semihosting). -d decodes the output's defmt frames with defmt-print. A run still going after
# SECONDS (default TIMEOUT_S) is killed and returns 124. Every failure prints why on stderr.
run_firmware() {
  local limit=$TIMEOUT_S decode=false
  while [ $# -gt 1 ]; do
    case $1 in
      -t) limit=$2; shift 2 ;;
      -d) decode=true; shift ;;
      *) break ;;
    esac
  done
  local elf=$1 status=0 decoder=0
  # stdin from /dev/null: QEMU must not read the terminal, from which timeout detaches it.
  local emulator=(timeout --kill-after=5 "$limit" "${QEMU[@]}" -kernel "$elf")
  if $decode; then
    # pipefail is on; PIPESTATUS still tells the emulator's status from the decoder's.
    "${emulator[@]}" </dev/null | defmt-print -e "$elf" || { local codes=("${PIPESTATUS[@]}"); status=${codes[0]}; decoder=${codes[1]}; }
  else
    "${emulator[@]}" </dev/null || status=$?
  fi
  case $status in
    0) ;;
    124 | 137) printf 'error: %s timed out after %s s and was killed\n' "$elf" "$limit" >&2; return 124 ;;
    *) printf 'error: %s exited with status %s\n' "$elf" "$status" >&2; return "$status" ;;
  esac
  if [ "$decoder" != 0 ]; then
    printf 'error: defmt-print failed with status %s decoding %s\n' "$decoder" "$elf" >&2
    return "$decoder"
  fi
}

# expect_failure WHAT PATTERN WANT [run_firmware arguments...]: runs a firmware that must fail, shows
# its output indented (so no line of it reads as the lane's own), and passes only if the run
# failed with status WANT ("nonzero": any failure but a timeout) and printed a line matching
# PATTERN.
expect_failure() {
  local what=$1 pattern=$2 want=$3 output status=0
  shift 3
  output=$(run_firmware "$@" 2>&1) || status=$?
  printf '%s\n' "$output" | sed 's/^/    | /'
  local failed_as_wanted=false
  case $want in
    nonzero) [ "$status" != 0 ] && [ "$status" != 124 ] && failed_as_wanted=true ;;
    *) [ "$status" = "$want" ] && failed_as_wanted=true ;;
  esac
  if $failed_as_wanted && grep -qE "$pattern" <<<"$output"; then
    printf 'ok: the %s was caught as a failure (status %s), as expected\n' "$what" "$status"
  else
    printf 'error: the %s was NOT caught: status %s, wanted %s and a line matching "%s"\n' \
      "$what" "$status" "$want" "$pattern" >&2
    exit 1
  fi
}

echo "--- test firmware, semihosting text"
(cd tests/qemu && cargo build --release --locked --quiet && run_firmware "$ELF/expertslab-qemu")

echo "--- expected failure: firmware that faults on purpose (the HardFault handler must report it)"
(cd tests/qemu && expect_failure "deliberate HardFault" '^HardFault: stacked pc 0x[0-9a-f]{8}' nonzero "$ELF/fault")

echo "--- expected failure: firmware that hangs on purpose (the timeout must kill it, here after 10 s)"
(cd tests/qemu && expect_failure "deliberate hang" 'timed out after 10 s' 124 -t 10 "$ELF/hang")

echo "--- test firmware, defmt over semihosting, decoded by defmt-print"
(cd tests/qemu && cargo build --release --locked --quiet --features defmt && run_firmware -d "$ELF/expertslab-qemu")

echo "--- firmware example"
(cd examples/firmware && cargo build --release --locked --quiet && run_firmware "$ELF/expertslab-firmware-example")
