#!/usr/bin/env bash
# `make bench`'s etcd figures: runs the three-node etcd boot test
# (tests/tests/etcd.rs) and prints the figures it measures, the lines it
# prints as `figure: ...` (bootstrap to three voting members, a write again
# after the leader's node died, memory on a control-plane node, and with
# BRAMBLE_ETCD_PERF etcdctl's 60 s `check perf`). Fails if the test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BRAMBLE_IMAGE:?BRAMBLE_IMAGE names the image to boot}"
: "${CARGO:=cargo}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
BRAMBLE_ETCD_PERF=1 "$CARGO" test --locked -p bramble-tests --test etcd -- --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
echo "etcd on three control-plane nodes in QEMU (tests/tests/etcd.rs)"
# libtest may print a test's name on the same line as its first output.
grep -o 'figure: .*' "$log" | sed 's/^figure: /  /' || true
if ((status != 0)); then
  grep -E '^(test .*FAILED|failures:|---- |Error)' "$log" | head -20 || true
  echo "the etcd test failed (exit $status)" >&2
  exit "$status"
fi
