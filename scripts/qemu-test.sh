#!/usr/bin/env bash
# The QEMU lanes. Cortex-M4: builds the test firmware in tests/qemu for thumbv7em-none-eabihf and
# runs it on QEMU's mps2-an386, once with semihosting text and once with defmt logs decoded by
# defmt-print, then runs the firmware example. RISC-V: builds the same test firmware for
# riscv32imac-unknown-none-elf and runs it on QEMU's virt machine without firmware (-bios none),
# with semihosting text. Every run is killed after 120 s and counts as failed; a test firmware run
# passes only if it exits with status 0 and prints its `N passed, 0 failed` line. On each
# instruction set two firmwares fail on purpose, one with a fault and one by hanging: the lane
# checks that each is caught and reported, and fails if either passes. C: builds the C test
# firmware (tests/cfirmware/build.sh: C code compiled with the Arm GNU toolchain and linked with
# the C interface's static library) and runs it on mps2-an386 with the same checks, plus a build
# of it that faults on purpose. Installs what is missing when it can (qemu-system-arm,
# qemu-system-misc and gcc-arm-none-eabi through apt-get as root, the Rust targets through
# rustup, defmt-print through cargo) and names what is missing otherwise.
#
# Usage: qemu-test.sh [all|m4|riscv|c] (default all): which lanes to run.
set -euo pipefail
cd "$(dirname "$0")/.."

lanes=${1:-all}
case $lanes in
  all | m4 | riscv | c) ;;
  *) printf 'usage: %s [all|m4|riscv|c]\n' "$0" >&2; exit 2 ;;
esac

QEMU_M4=(qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic
         -semihosting-config enable=on,target=native)
QEMU_RISCV=(qemu-system-riscv32 -machine virt -bios none -nographic
            -semihosting-config enable=on,target=native)
RISCV_TARGET=riscv32imac-unknown-none-elf
ELF=target/thumbv7em-none-eabihf/release
RISCV_ELF=target/$RISCV_TARGET/release
TIMEOUT_S=120
# The emulator run_firmware uses; each lane sets it.
QEMU=("${QEMU_M4[@]}")

missing() {
  printf 'error: %s is missing and could not be installed: %s\n' "$1" "$2" >&2
  exit 1
}

# The emulators and the C lane's compiler, each with the Debian package that has it; the missing
# ones are installed with one apt-get run.
packages=()
command -v qemu-system-arm >/dev/null || packages+=(qemu-system-arm)
command -v qemu-system-riscv32 >/dev/null || packages+=(qemu-system-misc)
case $lanes in
  all | c) command -v arm-none-eabi-gcc >/dev/null || packages+=(gcc-arm-none-eabi) ;;
esac
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Together first; should apt's resolver refuse the set (it has, for these packages), one by one.
    apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null 2>&1; then
      for package in "${packages[@]}"; do
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null \
          || missing "$package" "apt-get install $package failed"
      done
    fi
  else
    missing "${packages[*]}" "install Debian's ${packages[*]} (needs root and apt-get)"
  fi
fi
if ! command -v defmt-print >/dev/null; then
  cargo install defmt-print --version 1.2.0 --locked --quiet \
    || missing defmt-print "cargo install defmt-print failed"
fi
rustup target add thumbv7em-none-eabihf "$RISCV_TARGET" >/dev/null \
  || missing "the Rust targets thumbv7em-none-eabihf and $RISCV_TARGET" "rustup target add failed"

# run_firmware [-t SECONDS] [-d] [-s] ELF: runs ELF on the emulator in QEMU and returns the
# firmware's exit status (semihosting). -d decodes the output's defmt frames with defmt-print. -s
# also requires the test firmware's summary line `N passed, 0 failed` in the (plain text) output. A
# run still going after SECONDS (default TIMEOUT_S) is killed and returns 124. Every failure prints
# why on stderr.
run_firmware() {
  local limit=$TIMEOUT_S decode=false summary=false
  while [ $# -gt 1 ]; do
    case $1 in
      -t) limit=$2; shift 2 ;;
      -d) decode=true; shift ;;
      -s) summary=true; shift ;;
      *) break ;;
    esac
  done
  local elf=$1 status=0 decoder=0 output
  output=$(mktemp)
  # stdin from /dev/null: QEMU must not read the terminal, from which timeout detaches it.
  local emulator=(timeout --kill-after=5 "$limit" "${QEMU[@]}" -kernel "$elf")
  if $decode; then
    # pipefail is on; PIPESTATUS still tells the emulator's status from the decoder's.
    "${emulator[@]}" </dev/null | defmt-print -e "$elf" || { local codes=("${PIPESTATUS[@]}"); status=${codes[0]}; decoder=${codes[1]}; }
  else
    # The output is shown as it comes and kept for the summary check.
    "${emulator[@]}" </dev/null | tee "$output" || { local codes=("${PIPESTATUS[@]}"); status=${codes[0]}; }
  fi
  local summarized=true
  if $summary && ! grep -qE '^[0-9]+ passed, 0 failed'$'\r''?$' "$output"; then
    summarized=false
  fi
  rm -f "$output"
  case $status in
    0) ;;
    124 | 137) printf 'error: %s timed out after %s s and was killed\n' "$elf" "$limit" >&2; return 124 ;;
    *) printf 'error: %s exited with status %s\n' "$elf" "$status" >&2; return "$status" ;;
  esac
  if [ "$decoder" != 0 ]; then
    printf 'error: defmt-print failed with status %s decoding %s\n' "$decoder" "$elf" >&2
    return "$decoder"
  fi
  if ! $summarized; then
    printf "error: %s exited with status 0 but printed no 'N passed, 0 failed' line\n" "$elf" >&2
    return 1
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

if [ "$lanes" = all ] || [ "$lanes" = m4 ]; then
  echo "--- test firmware, semihosting text"
  (cd tests/qemu && cargo build --release --locked --quiet && run_firmware -s "$ELF/expertslab-qemu")

  echo "--- expected failure: firmware that faults on purpose (the HardFault handler must report it)"
  (cd tests/qemu && expect_failure "deliberate HardFault" '^HardFault: stacked pc 0x[0-9a-f]{8}' nonzero "$ELF/fault")

  echo "--- expected failure: firmware that hangs on purpose (the timeout must kill it, here after 10 s)"
  (cd tests/qemu && expect_failure "deliberate hang" 'timed out after 10 s' 124 -t 10 "$ELF/hang")

  echo "--- test firmware, defmt over semihosting, decoded by defmt-print"
  (cd tests/qemu && cargo build --release --locked --quiet --features defmt && run_firmware -d "$ELF/expertslab-qemu")

  echo "--- firmware example"
  (cd examples/firmware && cargo build --release --locked --quiet && run_firmware "$ELF/expertslab-firmware-example")
fi

# The RISC-V lane: the same test firmware and the same two deliberate failures, on rv32imac.
if [ "$lanes" = all ] || [ "$lanes" = riscv ]; then
  QEMU=("${QEMU_RISCV[@]}")
  riscv_start=$SECONDS

  echo "--- RISC-V (QEMU virt): test firmware, semihosting text"
  (cd tests/qemu && cargo build --release --locked --quiet --target "$RISCV_TARGET" \
    && run_firmware -s "$RISCV_ELF/expertslab-qemu")

  echo "--- RISC-V expected failure: firmware that faults on purpose (the trap handler must report it)"
  (cd tests/qemu && expect_failure "deliberate load access fault" '^Exception: mcause 0x00000005, mepc 0x[0-9a-f]{8}' \
    nonzero "$RISCV_ELF/fault")

  echo "--- RISC-V expected failure: firmware that hangs on purpose (the timeout must kill it, here after 3 s)"
  (cd tests/qemu && expect_failure "deliberate hang" 'timed out after 3 s' 124 -t 3 "$RISCV_ELF/hang")

  echo "--- RISC-V lane: $((SECONDS - riscv_start)) s"
fi

# The C lane: the C test firmware, which drives the static library through the C interface, and
# a build of it that faults on purpose, on the Cortex-M4.
if [ "$lanes" = all ] || [ "$lanes" = c ]; then
  QEMU=("${QEMU_M4[@]}")
  c_start=$SECONDS
  CELF=target/cfirmware

  echo "--- C test firmware (arm-none-eabi-gcc, linking the C interface's static library), semihosting text"
  bash tests/cfirmware/build.sh
  run_firmware -s "$CELF/expertslab-cfirmware.elf"

  echo "--- C expected failure: the C firmware faulting on purpose (its HardFault handler must report it)"
  expect_failure "deliberate HardFault in the C firmware" '^HardFault: stacked pc 0x[0-9a-f]{8}' nonzero \
    "$CELF/expertslab-cfirmware-fault.elf"

  echo "--- C lane: $((SECONDS - c_start)) s"
fi
