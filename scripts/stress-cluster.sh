#!/usr/bin/env bash
# Runs the broker's cluster tests (broker/tests/cluster/: real nats-servers
# and brokers) several copies at once, round after round, to find what
# only fails under load (elections, slow JetStream answers). Not part of
# the suite: a tool for hunting flaky failures.
#
# Usage: scripts/stress-cluster.sh [--copies N] [--rounds R] [FILTER]
#   --copies N  test binaries at once (default 3: on two cores, the load
#               that found the hand-over bugs of 2026-12-03)
#   --rounds R  rounds (default 2)
#   FILTER      a test name filter (default: every cluster test)
# Logs: target/stress-cluster/r<round>-c<copy>.log; a summary at the end.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COPIES=3
ROUNDS=2
FILTER=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --copies) COPIES=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) FILTER=("$1"); shift ;;
  esac
done

cd "$ROOT"
BIN=$(cargo test -p kubemqtt-broker --test cluster --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cluster" and m.get("executable"):
        print(m["executable"])')
[[ -x $BIN ]] || { echo "cannot build the cluster tests" >&2; exit 1; }
OUT="$ROOT/target/stress-cluster"
rm -rf "$OUT"
mkdir -p "$OUT"
failed=0
for round in $(seq 1 "$ROUNDS"); do
  pids=()
  for copy in $(seq 1 "$COPIES"); do
    "$BIN" "${FILTER[@]}" > "$OUT/r$round-c$copy.log" 2>&1 &
    pids+=($!)
  done
  for copy in $(seq 1 "$COPIES"); do
    if wait "${pids[$((copy - 1))]}"; then
      echo "round $round copy $copy: passed"
    else
      failed=$((failed + 1))
      echo "round $round copy $copy: FAILED ($(grep -c '^test .* FAILED' "$OUT/r$round-c$copy.log" || true) test(s)):"
      grep '^test .* FAILED' "$OUT/r$round-c$copy.log" | sed 's/^/  /' || true
    fi
  done
done
echo "$failed of $((ROUNDS * COPIES)) runs failed; logs in $OUT"
[[ $failed -eq 0 ]]
