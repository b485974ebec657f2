#!/usr/bin/env bash
# Benchmarks kubemqtt-broker against mosquitto and rumqttd with two load
# generators: kubemqtt-bench (its own client) and kubemqtt-bench-rumqttc (the
# rumqttc library), so that no figure depends on one client's speed.
#
# Each broker runs alone, pinned to CPU 0, on a free loopback port; the
# generator is pinned to CPU 1. The brokers take turns in RUNS rounds (each
# round: every broker, one after the other, every throughput scenario once
# with each generator); then LAT_RUNS rounds of the fixed-rate latency
# scenarios, longer, with the brokers alternating run by run. The median of
# each figure over the rounds is reported, with the goals of issue 12 checked. The result is a markdown page:
# docs/benchmarks.md for a full run, target/bench-vs-peers/benchmarks-quick.md
# for --quick.
#
# Usage: scripts/bench-vs-peers.sh [--quick] [--out FILE]
#          [--brokers "kubemqtt mosquitto rumqttd"] [--generators "kubemqtt rumqttc"]
#
# All traffic goes to 127.0.0.1. Every load is bounded by the generator's
# --duration/--drain/--hold and by `timeout` around each generator run.
# Binaries are built into $CARGO_TARGET_DIR (default target/); rumqttd is
# installed once into .tools/ with `cargo install` (see RUMQTTD below).
# Whatever follows the "Written by hand" line in an existing page is kept.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK="$ROOT/target/bench-vs-peers"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR" # cargo runs in $ROOT below
RELEASE="$TARGET_DIR/release"
OUR_BROKER="$RELEASE/kubemqtt-broker"
# The generators, by the names --generators takes.
declare -A GEN_BIN=([kubemqtt]="$RELEASE/kubemqtt-bench" [rumqttc]="$RELEASE/kubemqtt-bench-rumqttc")
declare -A GEN_NAME=([kubemqtt]=kubemqtt-bench [rumqttc]=kubemqtt-bench-rumqttc)
MOSQUITTO=/usr/sbin/mosquitto
RUMQTTD="$ROOT/.tools/bin/rumqttd"
BROKER_CPU=0
GEN_CPU=1

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

QUICK=0
OUT=""
BROKERS="kubemqtt mosquitto rumqttd"
GENERATORS="kubemqtt rumqttc"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --out) OUT="${2:?--out needs a file}"; shift ;;
        --brokers) BROKERS="${2:?--brokers needs a list}"; shift ;;
        --generators) GENERATORS="${2:?--generators needs a list}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    RUNS=1; DURATION=1; DRAIN=2; CONNS=500; CONN_RATE=1000; HOLD=2
    LAT_RUNS=1; LAT_DURATION=1
    OUT=${OUT:-"$WORK/benchmarks-quick.md"}
else
    RUNS=3; DURATION=5; DRAIN=3; CONNS=10000; CONN_RATE=2000; HOLD=5
    # A p99 at a fixed rate rests on its slowest 1 %: more and longer runs
    # than the flat-out scenarios, whose medians settle sooner.
    LAT_RUNS=5; LAT_DURATION=10
    OUT=${OUT:-"$ROOT/docs/benchmarks.md"}
fi

log() { echo "[bench-vs-peers] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- checks

for tool in jq taskset cargo awk; do
    command -v "$tool" >/dev/null || die "$tool is required (jq: apt-get install jq)"
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs to pin the broker and the generator apart"
for b in $BROKERS; do
    case "$b" in
        kubemqtt|rumqttd) ;;
        mosquitto) [ -x "$MOSQUITTO" ] || die "mosquitto not found at $MOSQUITTO (apt-get install mosquitto)" ;;
        *) die "unknown broker $b (kubemqtt, mosquitto, rumqttd)" ;;
    esac
done
for g in $GENERATORS; do
    [ -n "${GEN_BIN[$g]:-}" ] || die "unknown generator $g (kubemqtt, rumqttc)"
done

# ---------------------------------------------------------------- build

log "building kubemqtt-broker and the generators (release, into $RELEASE)"
(cd "$ROOT" && cargo build --release -p kubemqtt-broker -p kubemqtt-bench)
if [[ " $BROKERS " == *" rumqttd "* ]] && [ ! -x "$RUMQTTD" ]; then
    # Once per checkout (.tools/ is not in git; a few minutes of compiling).
    # Without --locked: rumqttd 0.20.0's lock file pins metrics 0.22.1, which
    # no longer compiles with current rustc; the newest compatible patch
    # releases do.
    log "installing rumqttd 0.20 into $ROOT/.tools"
    cargo install rumqttd --version '^0.20' --root "$ROOT/.tools"
fi

rm -rf "$WORK/raw" "$WORK/brokers"
mkdir -p "$WORK/raw" "$WORK/brokers"
RESULTS="$WORK/results.tsv"
CONN_RESULTS="$WORK/conn.tsv"
: >"$RESULTS"
: >"$CONN_RESULTS"
NOTES=()

# The generator and the brokers may need many descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- helpers

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000)) # below the ephemeral range
        if ! port_in_use "$p"; then echo "$p"; return; fi
    done
    die "no free port found"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
now() { date +%s.%N; }

broker_version() {
    case "$1" in
        kubemqtt) "$OUR_BROKER" --version ;;
        mosquitto) "$MOSQUITTO" -h 2>/dev/null | head -1 || true ;;
        rumqttd) echo "rumqttd $("$RUMQTTD" --version 2>/dev/null | awk '{print $NF}')" ;;
    esac
}

# Writes the configuration of broker $1 listening on port $2; prints the
# command line that starts it.
broker_config() {
    local name=$1 port=$2 dir="$WORK/brokers"
    case "$name" in
        kubemqtt)
            cat >"$dir/kubemqtt.toml" <<EOF
allow_anonymous = true

[[listeners]]
bind = "127.0.0.1:$port"

[limits]
max_inflight = 100
max_queued_messages = 100000

[log]
level = "warning"

[sys]
interval_secs = 0
EOF
            echo "$OUR_BROKER -c $dir/kubemqtt.toml"
            ;;
        mosquitto)
            cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_inflight_messages 100
max_queued_messages 100000
set_tcp_nodelay true
persistence false
log_type error
log_type warning
connection_messages false
EOF
            echo "$MOSQUITTO -c $dir/mosquitto.conf"
            ;;
        rumqttd)
            cat >"$dir/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 20000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF
            echo "$RUMQTTD --quiet -c $dir/rumqttd.toml"
            ;;
    esac
}

BROKER_PID=""
stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}
trap stop_broker EXIT

# Starts broker $1 on port $2, pinned to BROKER_CPU; waits until it accepts.
start_broker() {
    local name=$1 port=$2 cmd
    cmd=$(broker_config "$name" "$port")
    # shellcheck disable=SC2086 # the command line is split on purpose
    taskset -c "$BROKER_CPU" $cmd >"$WORK/brokers/$name.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || die "$name exited at start: $(tail -5 "$WORK/brokers/$name.log")"
        if port_in_use "$port"; then return 0; fi
        sleep 0.1
    done
    die "$name does not accept connections on port $port"
}

# Waits (at most 30 s) until the broker uses (almost) no CPU, so that a
# backlog left by one run does not slow down the next.
wait_idle() {
    local before after
    for _ in $(seq 1 60); do
        before=$(cpu_ticks "$BROKER_PID")
        sleep 0.5
        after=$(cpu_ticks "$BROKER_PID")
        [ $((after - before)) -le 1 ] && return 0
    done
    log "warning: broker still busy after 30 s"
}

# Seconds in a `times` line "0m1.250s 0m0.300s" (user + system).
times_secs() {
    awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] } print s }'
}

# Runs generator $1 (kubemqtt or rumqttc) with the remaining arguments
# against the broker on port $2. Prints its JSON report, a tab, the broker
# CPU and a tab, the generator CPU, both in % of one core over the run. Fails
# if the generator fails.
bench_run() {
    local bin=${GEN_BIN[$1]} port=$2; shift 2
    local out="$WORK/raw/current.json" t0 t1 c0 c1 gen
    c0=$(cpu_ticks "$BROKER_PID"); t0=$(now)
    # The subshell's `times` gives the CPU time of the generator it waited for.
    gen=$( (timeout 600 taskset -c "$GEN_CPU" "$bin" "$@" -b "127.0.0.1:$port" --json --quiet >"$out" \
        || echo failed; times) | tail -1 | times_secs)
    c1=$(cpu_ticks "$BROKER_PID"); t1=$(now)
    jq -e . "$out" >/dev/null 2>&1 || return 1
    printf '%s\t%s\t%s\n' "$(cat "$out")" \
        "$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", 100 * c / hz / (b - a)}')" \
        "$(awk -v g="$gen" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", 100 * g / (b - a)}')"
}

# ---------------------------------------------------------------- scenarios

# id | label | QoS | generator arguments
SCENARIOS=(
    "p2p-1-q0|p2p 1→1, flat out|0|p2p -n 1 -q 0"
    "p2p-1-q1|p2p 1→1, flat out|1|p2p -n 1 -q 1"
    "p2p-10-q0|p2p 10→10, flat out|0|p2p -n 10 -q 0"
    "p2p-10-q1|p2p 10→10, flat out|1|p2p -n 10 -q 1"
    "fanout-10-q0|fanout 1→10, flat out|0|fanout -n 10 -q 0"
    "fanout-10-q1|fanout 1→10, flat out|1|fanout -n 10 -q 1"
    "fanin-10-2-q0|fanin 10→2 shared, flat out|0|fanin -n 10 -m 2 -q 0"
    "fanin-10-2-q1|fanin 10→2 shared, flat out|1|fanin -n 10 -m 2 -q 1"
    "lat-1k-q1|latency p2p 10→10 at 1k msg/s|1|p2p -n 10 -q 1 -r 100"
    "lat-10k-q1|latency p2p 10→10 at 10k msg/s|1|p2p -n 10 -q 1 -r 1000"
)
COMMON="-d $DURATION --drain $DRAIN -s 16"
LAT_COMMON="-d $LAT_DURATION --drain $DRAIN -s 16"

# Brokers known to lack shared subscriptions skip fanin (all three have them).
declare -A SHARED_SUBS=([kubemqtt]=yes [mosquitto]=yes [rumqttd]=yes)

declare -A VERSION CMDLINE
started=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# Idle connections and memory: a fresh broker for each run, since allocators
# seldom give memory back after the connections close.
conn_run() {
    local broker=$1 port=$2 run=$3 rest fds c0 t0 c1 t1 gen limit with cpu
    local out="$WORK/raw/$broker-conn-$run.json"
    start_broker "$broker" "$port"
    sleep 1
    rest=$(rss_kb "$BROKER_PID"); fds=$(fd_count "$BROKER_PID")
    c0=$(cpu_ticks "$BROKER_PID"); t0=$(now)
    timeout 600 taskset -c "$GEN_CPU" "${GEN_BIN[kubemqtt]}" conn -n "$CONNS" --conn-rate "$CONN_RATE" \
        --hold "$HOLD" -b "127.0.0.1:$port" --json --quiet >"$out" &
    gen=$!
    # Sample the memory once (almost) all connections are open.
    limit=$(( $(date +%s) + CONNS / CONN_RATE + 30 ))
    while kill -0 "$gen" 2>/dev/null && [ "$(date +%s)" -lt "$limit" ] \
        && [ "$(fd_count "$BROKER_PID")" -lt $((fds + CONNS * 99 / 100)) ]; do
        sleep 0.2
    done
    sleep 1
    with=$(rss_kb "$BROKER_PID")
    wait "$gen" || log "warning: $broker conn run $run failed"
    c1=$(cpu_ticks "$BROKER_PID"); t1=$(now)
    stop_broker
    cpu=$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", 100 * c / hz / (b - a)}')
    if jq -e . "$out" >/dev/null 2>&1; then
        jq -r --arg b "$broker" --arg r "$run" --arg rest "$rest" --arg with "$with" --arg cpu "$cpu" \
            '[$b, $r, $rest, $with, .connections, .connect_failures, (.connect_latency.p99_us // -1), $cpu] | @tsv' \
            "$out" >>"$CONN_RESULTS"
        log "$broker conn run $run: $(jq -r '"\(.connections) open, \(.connect_failures) failed"' "$out"), RSS ${rest} kB -> ${with} kB"
    else
        NOTES+=("$broker: conn run $run produced no report")
    fi
}

# Runs scenario $5 (an entry of SCENARIOS) with generator $4 against the
# running broker and records the result: one row of RESULTS, columns
#  1 broker  2 generator  3 scenario id  4 run  5 sent/s  6 delivered/s
#  7 delivered %  8 p50 µs  9 p99 µs  10 broker CPU %  11 errors
#  12 generator CPU %  13 acked but not delivered  14 duplicates
# (-1: not applicable, e.g. acked-not-delivered at QoS 0).
scenario_run() {
    local broker=$1 port=$2 run=$3 gen=$4 entry=$5 id label qos args line json cpu gen_cpu common=$COMMON
    IFS='|' read -r id label qos args <<<"$entry"
    is_latency "$entry" && common=$LAT_COMMON
    kill -0 "$BROKER_PID" 2>/dev/null || die "$broker died; log: $WORK/brokers/$broker.log"
    wait_idle
    # shellcheck disable=SC2086 # arguments are split on purpose
    if ! line=$(bench_run "$gen" "$port" $args $common); then
        log "warning: $broker $id with ${GEN_NAME[$gen]} run $run failed"
        NOTES+=("$broker: $label QoS $qos with ${GEN_NAME[$gen]}, run $run failed")
        return
    fi
    IFS=$'\t' read -r json cpu gen_cpu <<<"$line"
    echo "$json" >"$WORK/raw/$broker-$gen-$id-$run.json"
    jq -r --arg b "$broker" --arg g "$gen" --arg id "$id" --arg r "$run" --arg cpu "$cpu" --arg gen "$gen_cpu" \
        '[$b, $g, $id, $r, .sent_per_sec, (.delivered_per_sec // 0), (.delivered_pct // 0),
          (.latency.p50_us // -1), (.latency.p99_us // -1), $cpu, .errors, $gen,
          (.acked_not_delivered // -1), (.duplicates // -1)] | @tsv' \
        <<<"$json" >>"$RESULTS"
    log "$broker $id ${GEN_NAME[$gen]} run $run: $(jq -r '"sent \(.sent_per_sec|floor)/s delivered \(.delivered_per_sec|floor)/s (\(.delivered_pct*100|floor/100) %) acked-not-delivered \(.acked_not_delivered // "-") p99 \(.latency.p99_us // "-") us errors \(.errors)"' <<<"$json"), CPU broker $cpu % generator $gen_cpu %"
}

is_latency() { [[ $1 == lat-* ]]; }

# Every throughput scenario once with each generator against a freshly
# started broker.
scenario_round() {
    local broker=$1 port=$2 run=$3 entry gen
    start_broker "$broker" "$port"
    for entry in "${SCENARIOS[@]}"; do
        is_latency "$entry" && continue
        if [[ $entry == fanin* ]] && [ "${SHARED_SUBS[$broker]}" != yes ]; then
            [ "$run" = 1 ] && NOTES+=("$broker: fanin skipped (no shared subscriptions)")
            continue
        fi
        for gen in $GENERATORS; do
            scenario_run "$broker" "$port" "$run" "$gen" "$entry"
        done
    done
    stop_broker
}

# The fixed-rate latency scenarios: their differences are small next to
# how the machine's state drifts over minutes, so the brokers alternate
# run by run (each started fresh), not round by round.
latency_round() {
    local run=$1 entry broker gen
    for entry in "${SCENARIOS[@]}"; do
        is_latency "$entry" || continue
        for gen in $GENERATORS; do
            for broker in $BROKERS; do
                start_broker "$broker" "${PORT[$broker]}"
                scenario_run "$broker" "${PORT[$broker]}" "$run" "$gen" "$entry"
                stop_broker
            done
        done
    done
}

declare -A PORT
for broker in $BROKERS; do
    PORT[$broker]=$(free_port)
    VERSION[$broker]=$(broker_version "$broker")
    CMDLINE[$broker]="taskset -c $BROKER_CPU $(broker_config "$broker" "${PORT[$broker]}" | sed "s|$ROOT/||g")"
    log "$broker: ${VERSION[$broker]}, port ${PORT[$broker]}, CPU $BROKER_CPU"
done

# Rounds: each round runs every broker once, one after the other, so that
# other work on the machine weighs on all brokers alike.
for run in $(seq 1 "$RUNS"); do
    for broker in $BROKERS; do
        log "== round $run/$RUNS: $broker"
        conn_run "$broker" "${PORT[$broker]}" "$run"
        scenario_round "$broker" "${PORT[$broker]}" "$run"
    done
done
for run in $(seq 1 "$LAT_RUNS"); do
    log "== latency round $run/$LAT_RUNS, brokers alternating"
    latency_round "$run"
done
elapsed=$(( $(date +%s) - started ))

# ---------------------------------------------------------------- report

# Values of column $4 over the runs of broker $1, generator $2, scenario $3.
values() {
    awk -F'\t' -v b="$1" -v g="$2" -v id="$3" -v c="$4" \
        '$1 == b && $2 == g && $3 == id {print $c}' "$RESULTS" | sort -g
}
# Median of those values (n/a without a run).
median() { values "$@" | awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else print v[int((NR + 1) / 2)]}'; }
# Largest of those values (n/a without a run).
maximum() { values "$@" | awk '{v = $1} END {if (NR == 0) print "n/a"; else print v}'; }

fmt_rate() { awk -v v="$1" 'BEGIN {if (v == "n/a") print "n/a"; else printf "%.0f", v}'; }
fmt_pct() { awk -v v="$1" 'BEGIN {if (v == "n/a") print "n/a"; else printf "%.1f %%", v}'; }
# A count, "–" where it does not apply (-1).
fmt_count() { awk -v v="$1" 'BEGIN {if (v == "n/a") print "n/a"; else if (v < 0) print "–"; else printf "%d", v}'; }
fmt_us() {
    awk -v v="$1" 'BEGIN {
        if (v == "n/a" || v < 0) print "n/a";
        else if (v < 1000) printf "%d µs", v;
        else if (v < 1000000) printf "%.2f ms", v / 1000;
        else printf "%.2f s", v / 1000000 }'
}
fmt_mib() { awk -v v="$1" 'BEGIN {if (v == "n/a") print "n/a"; else printf "%.1f MiB", v / 1024}'; }
# $1 ÷ $2 with two decimals, n/a when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "n/a" || b == "n/a" || a < 0 || b <= 0) print "n/a"; else printf "%.2f", a / b}'; }
# "ok" if ratio $1 is at least (ge) or at most (le) $3, "FAIL" if not, n/a if unknown.
check() {
    awk -v r="$1" -v op="$2" -v goal="$3" 'BEGIN {
        if (r == "n/a") print "n/a";
        else if ((op == "ge" && r + 0 >= goal) || (op == "le" && r + 0 <= goal)) print "ok";
        else print "FAIL" }'
}

# A goals-table cell: value $1, then its check $2 if there is one (n/a
# needs saying once).
cell() { if [ -n "$2" ] && [ "$2" != n/a ]; then echo "$1 $2"; else echo "$1"; fi; }

# One row of the goals table for scenario $2 (an entry of SCENARIOS) and
# generator $1; bumps GOALS_PASS / GOALS_FAIL / GOALS_OPEN.
goal_row() {
    local gen=$1 entry=$2 id label qos rate p99 lost r_mosq r_rumq r_p99 c_mosq c_rumq c_lost c_p99 verdict
    IFS='|' read -r id label qos _ <<<"$entry"
    rate=$(median kubemqtt "$gen" "$id" 6)
    lost=$(maximum kubemqtt "$gen" "$id" 13)
    if is_latency "$entry"; then
        r_mosq="–"; r_rumq="–"; c_mosq=""; c_rumq=""
        p99=$(median kubemqtt "$gen" "$id" 9)
        r_p99=$(ratio "$p99" "$(median mosquitto "$gen" "$id" 9)")
        c_p99=$(check "$r_p99" le 1)
    else
        r_mosq=$(ratio "$rate" "$(median mosquitto "$gen" "$id" 6)")
        r_rumq=$(ratio "$rate" "$(median rumqttd "$gen" "$id" 6)")
        c_mosq=$(check "$r_mosq" ge 1.5)
        c_rumq=$(check "$r_rumq" ge 1)
        r_p99="–"; c_p99=""
    fi
    if [ "$qos" -ge 1 ]; then
        c_lost=$(awk -v v="$lost" 'BEGIN {if (v == "n/a") print "n/a"; else if (v == 0) print "ok"; else print "FAIL"}')
    else
        c_lost=""
    fi
    if [[ " $c_mosq $c_rumq $c_lost $c_p99 " == *" FAIL "* ]]; then
        verdict="**FAIL**"; GOALS_FAIL=$((GOALS_FAIL + 1))
    elif [[ " $c_mosq $c_rumq $c_lost $c_p99 " == *" n/a "* ]]; then
        verdict="incomplete"; GOALS_OPEN=$((GOALS_OPEN + 1))
    else
        verdict="PASS"; GOALS_PASS=$((GOALS_PASS + 1))
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$qos" "${GEN_NAME[$gen]}" \
        "$(fmt_rate "$rate")" "$(cell "$r_mosq" "$c_mosq")" "$(cell "$r_rumq" "$c_rumq")" \
        "$(cell "$([ "$qos" -ge 1 ] && fmt_count "$lost" || echo "–")" "$c_lost")" \
        "$(cell "$r_p99" "$c_p99")" "$verdict"
}

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
# shellcheck source=/dev/null
os_name=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
mode=$([ "$QUICK" = 1 ] && echo "quick smoke run (not for comparison)" || echo "full run")
GOALS_PASS=0; GOALS_FAIL=0; GOALS_OPEN=0

# Sections written by hand (analysis, before/after rows) go below this line
# in the page; the script keeps them when it rewrites the page.
KEEP_MARK='<!-- Written by hand: everything below this line is kept when scripts/bench-vs-peers.sh rewrites the page. -->'
KEPT=""
if [ -f "$OUT" ]; then
    KEPT=$(awk -v m="$KEEP_MARK" 'found || $0 == m {found = 1; print}' "$OUT")
fi

mkdir -p "$(dirname "$OUT")"
{
    echo "# Benchmarks: kubemqtt-broker vs mosquitto vs rumqttd"
    echo
    echo "Generated by \`scripts/bench-vs-peers.sh$([ "$QUICK" = 1 ] && echo " --quick")\` on $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "($mode, $RUNS run(s) per flat-out scenario and generator, $LAT_RUNS of ${LAT_DURATION} s per fixed-rate one, medians quoted, ${elapsed} s in all). Do not edit the numbers by hand: rerun the script."
    echo
    echo "## Machine"
    echo
    echo "- CPUs: $(nproc) × $cpu_model; memory $mem_total; $os_name, Linux $(uname -r)"
    echo "- Broker pinned to CPU $BROKER_CPU, generator pinned to CPU $GEN_CPU (\`taskset\`); all traffic over 127.0.0.1"
    echo "- Generators: $(for g in $GENERATORS; do printf '\x60%s\x60 ' "${GEN_NAME[$g]}"; done)(see *The generators* below)"
    echo "- $(rustc --version); kubemqtt commit $commit"
    echo "- load average (1, 5, 15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
    for b in $BROKERS; do echo "- $b: ${VERSION[$b]}"; done
    echo
    if [[ " $BROKERS " == *" kubemqtt "* ]]; then
        echo "## Goals"
        echo
        echo "From issue 12, per scenario and generator, in this run: kubemqtt delivers at least 1.5× mosquitto's"
        echo "messages per second and at least rumqttd's (ratios of the medians); at QoS 1 no message is acknowledged"
        echo "to a publisher without reaching its subscribers (the most in any run must be 0); at the fixed rates, p99"
        echo "latency is no worse than mosquitto's. n/a: a figure is missing (broker not in this run, or a run failed)."
        echo
        echo "| scenario | QoS | generator | kubemqtt msg/s | ÷ mosquitto (≥ 1.5) | ÷ rumqttd (≥ 1) | acked, not delivered (= 0) | p99 ÷ mosquitto (≤ 1) | result |"
        echo "|---|---|---|---:|---:|---:|---:|---:|---|"
        for entry in "${SCENARIOS[@]}"; do
            for gen in $GENERATORS; do goal_row "$gen" "$entry"; done
        done
        echo
        echo "**$GOALS_PASS of $((GOALS_PASS + GOALS_FAIL + GOALS_OPEN)) rows meet every goal; $GOALS_FAIL fail, $GOALS_OPEN incomplete.**"
        echo "A row where the generator's CPU is near 100 % (see *Details*) measures the generator as much as the brokers."
        echo
    fi
    echo "## Throughput and latency"
    echo
    echo "Per generator: delivered messages per second and end-to-end p99 latency (medians of $RUNS runs, $LAT_RUNS at the fixed rates), and at QoS 1"
    echo "the messages acknowledged to the publishers but never delivered to the subscribers, which stayed connected"
    echo "the whole run (the most in any run)."
    for gen in $GENERATORS; do
        echo
        echo "### ${GEN_NAME[$gen]}"
        echo
        printf '| scenario | QoS |'; for b in $BROKERS; do printf ' %s msg/s |' "$b"; done
        for b in $BROKERS; do printf ' %s acked, not delivered |' "$b"; done
        for b in $BROKERS; do printf ' %s p99 |' "$b"; done; echo
        printf '|---|---|'; for _ in $BROKERS $BROKERS $BROKERS; do printf -- '---:|'; done; echo
        for entry in "${SCENARIOS[@]}"; do
            IFS='|' read -r id label qos _ <<<"$entry"
            printf '| %s | %s |' "$label" "$qos"
            for b in $BROKERS; do printf ' %s |' "$(fmt_rate "$(median "$b" "$gen" "$id" 6)")"; done
            for b in $BROKERS; do printf ' %s |' "$(fmt_count "$(maximum "$b" "$gen" "$id" 13)")"; done
            for b in $BROKERS; do printf ' %s |' "$(fmt_us "$(median "$b" "$gen" "$id" 9)")"; done
            echo
        done
    done
    echo
    echo "### Details"
    echo
    echo "Medians of $RUNS runs ($LAT_RUNS at the fixed rates); acked-not-delivered and duplicates: the most in any run."
    echo
    echo "| scenario | QoS | generator | broker | sent msg/s | delivered msg/s | delivered | acked, not delivered | duplicates | p50 | p99 | broker CPU | generator CPU | errors |"
    echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r id label qos _ <<<"$entry"
        for gen in $GENERATORS; do
            for b in $BROKERS; do
                printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s %% | %s %% | %s |\n' \
                    "$label" "$qos" "${GEN_NAME[$gen]}" "$b" \
                    "$(fmt_rate "$(median "$b" "$gen" "$id" 5)")" \
                    "$(fmt_rate "$(median "$b" "$gen" "$id" 6)")" \
                    "$(fmt_pct "$(median "$b" "$gen" "$id" 7)")" \
                    "$(fmt_count "$(maximum "$b" "$gen" "$id" 13)")" \
                    "$(fmt_count "$(maximum "$b" "$gen" "$id" 14)")" \
                    "$(fmt_us "$(median "$b" "$gen" "$id" 8)")" \
                    "$(fmt_us "$(median "$b" "$gen" "$id" 9)")" \
                    "$(median "$b" "$gen" "$id" 10)" \
                    "$(median "$b" "$gen" "$id" 12)" \
                    "$(median "$b" "$gen" "$id" 11)"
            done
        done
    done
    echo
    echo "## Connections and memory"
    echo
    echo "$CONNS idle connections opened at $CONN_RATE/s by \`kubemqtt-bench conn\` and held ${HOLD} s, each run on a freshly started broker"
    echo "(median of $RUNS runs). RSS is VmRSS from /proc/PID/status: at rest 1 s after the start, and with the connections"
    echo "1 s after (almost) all of them were open. Broker CPU is over the whole run, in % of one core."
    echo
    echo "| broker | RSS at rest | RSS with $CONNS connections | per connection | open | failed | connect p99 | broker CPU |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for b in $BROKERS; do
        per=$(awk -F'\t' -v b="$b" '$1 == b && $5 > 0 {print ($4 - $3) * 1024 / $5}' "$CONN_RESULTS" | sort -g |
            awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else printf "%.1f KiB", v[int((NR + 1) / 2)] / 1024}')
        med() { awk -F'\t' -v b="$b" -v c="$1" '$1 == b {print $c}' "$CONN_RESULTS" | sort -g |
            awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else print v[int((NR + 1) / 2)]}'; }
        printf '| %s | %s | %s | %s | %s | %s | %s | %s %% |\n' "$b" "$(fmt_mib "$(med 3)")" \
            "$(fmt_mib "$(med 4)")" "$per" "$(med 5)" "$(med 6)" "$(fmt_us "$(med 7)")" "$(med 8)"
    done
    echo
    if [ "${#NOTES[@]}" -gt 0 ]; then
        echo "## Notes from this run"
        echo
        for n in "${NOTES[@]}"; do echo "- $n"; done
        echo
    fi
    cat <<EOF
## The generators

Two generators (crate \`bench/\`) run the same scenarios with the same options and write the same JSON report,
so that no comparison rests on one client's speed or on one client's reading of the protocol:

- \`kubemqtt-bench\` is a purpose-built MQTT 3.1.1 client on tokio: raw TCP, a minimal codec, several PUBLISHes
  per write. It is cheap per message, so it can saturate a broker from one core. Subcommands: \`conn\`, \`pub\`,
  \`sub\`, \`p2p\`, \`fanout\`, \`fanin\`.
- \`kubemqtt-bench-rumqttc\` drives the same \`p2p\`, \`fanout\` and \`fanin\` scenarios through
  [rumqttc](https://crates.io/crates/rumqttc) 0.25, a widely used Rust client: one event loop per connection,
  one flush per packet, one tokio task per client. It is slower per message, so its flat-out figures show what
  a typical application client gets, and on one core it may saturate before the broker does.

Publishers stamp the send time (and, from 16 bytes on, the publisher and sequence number) into each payload;
subscribers compute the end-to-end latency (HDR histogram) and tell duplicates from first deliveries. Every run
is bounded by \`--duration\` (or \`--count\`), \`--drain\` and \`--hold\`, and contacts only the \`--broker\`
address. TLS is not implemented yet.

## How to read it

- **msg/s delivered**: messages received by all subscribers, divided by the
  time from the first publish to the last delivery. "Flat out" publishers send
  as fast as the broker accepts (QoS 1: at most 64 unacknowledged each), so
  these rows measure saturation: their latency is mostly queueing, and a
  broker that accepts faster than it delivers queues or drops the difference
  (see *delivered* and *acked, not delivered*).
- **delivered**: delivered ÷ expected, where expected = sent × the subscribers
  each message reaches. Below 100 % means messages were dropped (queue limits,
  QoS 0 overload) or still queued when the drain time (${DRAIN} s) ran out.
- **acked, not delivered** (QoS 1): PUBACKs the publishers received × the
  subscribers each message should reach − distinct messages the subscribers
  received, never below 0. The subscribers are connected the whole run, so
  anything above 0 is a message the broker acknowledged and then lost (or had
  not delivered by the end of the drain).
- **duplicates**: deliveries of a message the same subscriber (or, for the
  shared subscription, the same group) had already received.
- **latency**: each payload carries its send time; the subscriber computes
  receive − send. The fixed-rate rows (1k and 10k msg/s in total over 10
  pairs) are the ones to read for latency. \`kubemqtt-bench-rumqttc\` stamps
  a payload when it queues it for rumqttc, so its latency includes the wait in
  rumqttc's request channel.
- **broker CPU**, **generator CPU**: user + system time over the whole
  generator run (connect, publish and drain), in % of one core. Each is pinned
  to one core, so 100 % is the ceiling; a row where the generator is near
  100 % and the brokers post similar figures measures the generator, not the
  brokers.
- **per connection**: (RSS with the connections − RSS at rest) ÷ open
  connections.

## Exact commands

Brokers (each alone, taking turns over $RUNS round(s); in each round a broker is started fresh for the
idle-connection run, then once more for the throughput scenarios, each run with every generator in turn; the
two fixed-rate latency scenarios follow, $LAT_RUNS runs of each with the brokers alternating run by run, each started fresh;
configurations written by the script):

\`\`\`sh
EOF
    for b in $BROKERS; do echo "${CMDLINE[$b]}"; done
    echo '```'
    echo
    echo "Broker settings, equalised where the brokers allow: QoS 1/2 in-flight window 100, queue 100,000 messages per"
    echo "client, logging down to warnings, no persistence. mosquitto gets \`set_tcp_nodelay true\` (our broker sets"
    echo "TCP_NODELAY itself; rumqttd 0.20 has no such option and does not). rumqttd: \`next_connection_delay_ms = 0\`,"
    echo "\`max_connections = 20000\`; see \`broker_config\` in the script for the complete files."
    echo
    echo "Generator runs (\`PORT\` is the broker's port; each flat-out line runs $RUNS times, each fixed-rate line $LAT_RUNS):"
    echo
    echo '```sh'
    echo "taskset -c $GEN_CPU target/release/kubemqtt-bench conn -n $CONNS --conn-rate $CONN_RATE --hold $HOLD -b 127.0.0.1:PORT --json --quiet"
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r _ _ _ args <<<"$entry"
        common=$COMMON
        is_latency "$entry" && common=$LAT_COMMON
        for gen in $GENERATORS; do
            echo "taskset -c $GEN_CPU target/release/${GEN_NAME[$gen]} $args $common -b 127.0.0.1:PORT --json --quiet"
        done
    done
    echo '```'
    echo
    echo "Reproduce: \`scripts/bench-vs-peers.sh\` (about $(( (elapsed + 59) / 60 )) minutes on this machine; \`--quick\` for a short smoke run)."
    echo
    if [ -n "$KEPT" ]; then echo "$KEPT"; else echo "$KEEP_MARK"; fi
} >"$OUT"
log "wrote $OUT (raw reports in $WORK/raw)"
