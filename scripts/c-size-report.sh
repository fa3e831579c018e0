#!/usr/bin/env bash
# Size report of the C test firmware (tests/cfirmware): builds it (tests/cfirmware/build.sh: the C
# interface's static library at profile `firmware`, opt-level "s" with LTO, linked with
# --gc-sections) and sums, from the linker map, the bytes each input file contributes to the
# firmware's .text and .rodata: the static library's share (the core, the C interface, and the
# parts of Rust's core, alloc and compiler-builtins they use) beside the C code's and libgcc's.
# Compare with scripts/size-report.sh, the Rust firmware's share of the core.
#
# Usage: c-size-report.sh. Needs arm-none-eabi-gcc (Debian's gcc-arm-none-eabi).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/cfirmware/build.sh
MAP=target/cfirmware/expertslab-cfirmware.map
echo "built with: bash tests/cfirmware/build.sh (map: $MAP)"
# In the map's memory map, an input section is ` .text.NAME ADDRESS SIZE FILE`, or its name alone
# on one line and ` ADDRESS SIZE FILE` on the next when the name is long.
awk '
  /^Linker script and memory map/ { mapped = 1; next }
  !mapped { next }
  /^ \.(text|rodata)/ {
    kind = ($1 ~ /^\.text/) ? ".text" : ".rodata"
    if (NF >= 4) { add(kind, $3, $4) } else { pending = kind }
    next
  }
  pending != "" && NF >= 3 && $1 ~ /^0x/ { add(pending, $2, $3); pending = ""; next }
  { pending = "" }
  function add(kind, size, file) {
    owner = (file ~ /libexpertslab_ffi\.a/) ? "static library" : (file ~ /libgcc\.a/) ? "libgcc" : "C code and vectors"
    bytes[owner, kind] += hex(size)
    owners[owner] = 1
  }
  function hex(text,    value, i) {
    value = 0
    for (i = 3; i <= length(text); i++) value = value * 16 + index("0123456789abcdef", tolower(substr(text, i, 1))) - 1
    return value
  }
  END {
    printf "%-20s %10s %10s\n", "from", ".text", ".rodata"
    split("static library|C code and vectors|libgcc", order, "|")
    for (i = 1; i <= 3; i++) printf "%-20s %10d %10d\n", order[i], bytes[order[i], ".text"], bytes[order[i], ".rodata"]
  }
' "$MAP"
