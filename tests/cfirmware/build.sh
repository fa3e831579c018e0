#!/usr/bin/env bash
# Builds the C test firmware (tests/cfirmware) for QEMU's mps2-an386 into
# target/cfirmware/expertslab-cfirmware.elf, and the same firmware faulting on purpose into
# target/cfirmware/expertslab-cfirmware-fault.elf: generates the golden vectors as C
# (golden_vectors.c, by the golden crate's c-vectors), builds the C interface's static library for
# thumbv7em-none-eabihf (profile `firmware`), and compiles and links the C sources against it
# with the Arm GNU toolchain (arm-none-eabi-gcc; no C library: the firmware needs none, the Rust
# library brings memcpy and friends).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=target/cfirmware
LIB=${CARGO_TARGET_DIR:-target}/thumbv7em-none-eabihf/firmware/libexpertslab_ffi.a
mkdir -p "$OUT"
cargo run --quiet --locked -p expertslab-golden --bin c-vectors -- "$OUT/golden_vectors.c"
cargo rustc --quiet --locked -p expertslab-ffi --lib --target thumbv7em-none-eabihf --profile firmware --no-default-features \
  --crate-type staticlib

CFLAGS=(-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os -g -std=c11 -ffreestanding
        -ffunction-sections -fdata-sections -Wall -Wextra -Werror -Iffi/include -Itests/cfirmware)
SOURCES=(tests/cfirmware/startup.c tests/cfirmware/semihosting.c tests/cfirmware/main.c "$OUT/golden_vectors.c")
link() {
  local elf=$1
  shift
  arm-none-eabi-gcc "${CFLAGS[@]}" "$@" -nostartfiles -nostdlib -T tests/cfirmware/link.ld -Wl,--gc-sections -Wl,-z,noexecstack \
    -Wl,-Map="${elf%.elf}.map" "${SOURCES[@]}" "$LIB" -lgcc -o "$elf"
}
link "$OUT/expertslab-cfirmware.elf"
link "$OUT/expertslab-cfirmware-fault.elf" -DCFIRMWARE_FAULT
