#!/usr/bin/env bash
# `make bench`'s fault figures: runs the fault-injection boot tests
# (faults.rs, recovery.rs, pid1_panic.rs) and counts the faults each
# injected and the ones the node survived (its API answering again), as the
# tests print them (`bramble_tests::fault`). Fails if a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BRAMBLE_IMAGE:?BRAMBLE_IMAGE names the image to boot}"
: "${CARGO:=cargo}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
"$CARGO" test --locked -p bramble-tests --test faults --test recovery --test pid1_panic \
  -- --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
# libtest may print a test's name on the same line as its first output.
lines=$(grep -o 'fault \(injected\|survived\): .*' "$log" || true)
injected=$(grep -c '^fault injected:' <<<"$lines" || true)
survived=$(grep -c '^fault survived:' <<<"$lines" || true)
echo "Faults injected in QEMU (tests/tests/{faults,recovery,pid1_panic}.rs)"
printf '  injected %d, survived %d\n' "$injected" "$survived"
while IFS= read -r fault; do
  [[ -n $fault ]] || continue
  if grep -qxF "fault survived: $fault" <<<"$lines"; then
    echo "  survived  $fault"
  else
    echo "  FAILED    $fault"
  fi
done < <(sed -n 's/^fault injected: //p' <<<"$lines")
if ((status != 0)); then
  grep -E '^(test .*FAILED|failures:|---- )' "$log" | head -20 || true
  echo "a fault test failed (exit $status)" >&2
  exit "$status"
fi
