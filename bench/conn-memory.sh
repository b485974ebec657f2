#!/usr/bin/env bash
# Measures kubemqtt-broker's memory per idle MQTT connection: starts a fresh
# broker, reads its RSS at rest, opens N idle MQTT 3.1.1 connections with
# `kubemqtt-bench conn`, reads the RSS again once (almost) all are open, and
# prints (with − rest) ÷ open. Repeats RUNS times and prints each run and the
# median. The same method as the "Connections and memory" table of
# docs/benchmarks.md (scripts/bench-vs-peers.sh), for kubemqtt alone.
#
# Usage: bench/conn-memory.sh [-n CONNS] [-r RUNS] [--broker BIN] [--bench BIN]
#   BIN defaults: $CARGO_TARGET_DIR/release/… or target/release/…
#   Extra environment for the broker (e.g. MALLOC_ARENA_MAX=2) is passed on.
#
# All traffic goes to 127.0.0.1; each generator run is bounded by --hold
# and `timeout`.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BROKER="$TARGET/release/kubemqtt-broker"
BENCH="$TARGET/release/kubemqtt-bench"
CONNS=10000
RUNS=3
RATE=2000
HOLD=3

while [ $# -gt 0 ]; do
    case "$1" in
        -n) CONNS=${2:?}; shift ;;
        -r) RUNS=${2:?}; shift ;;
        --broker) BROKER=${2:?}; shift ;;
        --bench) BENCH=${2:?}; shift ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

WORK=$(mktemp -d)
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
port_in_use() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

results=()
for run in $(seq 1 "$RUNS"); do
    port=$((20000 + RANDOM % 12000))
    while port_in_use "$port"; do port=$((20000 + RANDOM % 12000)); done
    cat >"$WORK/broker.toml" <<EOF
allow_anonymous = true

[[listeners]]
bind = "127.0.0.1:$port"

[log]
level = "warning"

[sys]
interval_secs = 0
EOF
    "$BROKER" -c "$WORK/broker.toml" >"$WORK/broker.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        port_in_use "$port" && break
        sleep 0.1
    done
    sleep 1
    rest=$(rss_kb "$BROKER_PID")
    fds=$(fd_count "$BROKER_PID")
    timeout 300 "$BENCH" conn -n "$CONNS" --conn-rate "$RATE" --hold "$HOLD" \
        -b "127.0.0.1:$port" --json --quiet >"$WORK/conn.json" &
    gen=$!
    limit=$(($(date +%s) + CONNS / RATE + 30))
    while kill -0 "$gen" 2>/dev/null && [ "$(date +%s)" -lt "$limit" ] \
        && [ "$(fd_count "$BROKER_PID")" -lt $((fds + CONNS * 99 / 100)) ]; do
        sleep 0.2
    done
    sleep 1
    with=$(rss_kb "$BROKER_PID")
    open=$(($(fd_count "$BROKER_PID") - fds))
    wait "$gen" || echo "warning: generator failed in run $run" >&2
    kill "$BROKER_PID"
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
    per=$(awk -v a="$rest" -v b="$with" -v n="$open" 'BEGIN {printf "%.2f", (b - a) / n}')
    echo "run $run: rest ${rest} kB, with $open connections ${with} kB, ${per} KiB per connection"
    results+=("$per")
done
printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR] = $1} END {printf "median: %s KiB per connection\n", a[int((NR + 1) / 2)]}'
