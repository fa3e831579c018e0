#!/usr/bin/env bash
# Runs the GPU lane on the GPU machine, from the folder scripts/gpu-build.sh filled:
#   every test-* binary (libtest ones with --include-ignored --test-threads=1, so tests marked
#   #[ignore = "needs a CUDA GPU"] run too; plain ones print libtest's summary line themselves),
#   then the benchmark binaries named as arguments (bench-<name> or <name>; "all" for every one).
# Prints each binary's output, then a summary line "N passed, N failed" alone on a line and a
# line naming what ran. Exits non-zero when anything failed; binaries that say they were not
# run (no CUDA driver or device) count as failed, since this script is for the GPU machine.
# Usage: bash gpu-test.sh [BENCH...]
set -uo pipefail
cd "$(dirname "$0")"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

passed=0
failed=0
ran=()

for bin in ./test-*; do
  [ -x "$bin" ] || continue
  name=${bin#./}
  echo "==> $name"
  out=$("$bin" --include-ignored --test-threads=1 2>&1)
  status=$?
  printf '%s\n' "$out"
  # Sum libtest's "test result: ... N passed; M failed; ..." lines.
  p=$(printf '%s\n' "$out" | sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1/p' | awk '{s+=$1} END {print s+0}')
  f=$(printf '%s\n' "$out" | sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\2/p' | awk '{s+=$1} END {print s+0}')
  if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crashed before its summary
  # On the GPU machine, GPU tests that say they were not run (no driver or device found) fail.
  if printf '%s\n' "$out" | grep -q 'not run:'; then f=$((f + 1)); fi
  passed=$((passed + p))
  failed=$((failed + f))
  ran+=("$name")
done

benches=("$@")
if [ "${1:-}" = all ]; then
  benches=()
  for bin in ./bench-*; do [ -x "$bin" ] && benches+=("${bin#./}"); done
fi
for bench in "${benches[@]}"; do
  bin=./${bench#./}
  [ -x "$bin" ] || bin=./bench-${bench}
  echo "==> ${bin#./}"
  if [ -x "$bin" ]; then
    out=$("$bin" --bench 2>&1)
    status=$?
    printf '%s\n' "$out"
  else
    out="missing"
    status=1
  fi
  if [ "$status" -eq 0 ] && ! printf '%s\n' "$out" | grep -q 'not run:'; then
    passed=$((passed + 1))
  else
    echo "${bin#./}: failed, not run or missing"
    failed=$((failed + 1))
  fi
  ran+=("${bin#./}")
done

echo "$passed passed, $failed failed"
echo "ran: ${ran[*]:-nothing}"
[ "$failed" -eq 0 ]
