#!/usr/bin/env bash
# The whole test suite: ./scripts/test.sh
#
# 1. Installs what the tests need and is missing (Debian: apt-get; Python
#    packages pinned in tests/interop/requirements.txt). Quiet when present.
# 2. Runs the steps below in order, stopping at the first failure.
# 3. Prints a summary.
#
# Adding a step: write `step "name" command args...` in main() (a shell
# function works as the command; it runs in a subshell with `set -e`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SUMMARY=()
SUITE_START=$SECONDS

banner() {
    printf '\n==================== %s ====================\n' "$*"
}

print_summary() {
    printf '\n==================== summary ====================\n'
    printf '  %s\n' "${SUMMARY[@]}"
}

# step NAME CMD [ARGS...]: run CMD with a banner; on failure print the
# summary and exit with CMD's status.
step() {
    local name="$1"
    shift
    banner "$name"
    local start=$SECONDS status=0
    # Not `if "$@"`: set -e would be ignored inside shell-function steps.
    set +e
    (
        set -e
        "$@"
    )
    status=$?
    set -e
    local took=$((SECONDS - start))
    if [ "$status" -ne 0 ]; then
        SUMMARY+=("FAILED  $name (${took}s, exit $status)")
        print_summary
        printf '\ntest.sh: step "%s" failed (exit %d): %s\n' "$name" "$status" "$*" >&2
        exit "$status"
    fi
    SUMMARY+=("ok      $name (${took}s)")
}

# ---------------------------------------------------------------------------
# dependencies

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "test.sh: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: missing $*, and apt-get is not available: install them by hand" >&2
        return 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    echo "installing (apt): $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

python_deps_present() {
    python3 - <<'EOF' 2>/dev/null
import sys
import paho.mqtt
import pytest  # noqa: F401
sys.exit(0 if int(paho.mqtt.__version__.split(".")[0]) >= 2 else 1)
EOF
}

install_dependencies() {
    local missing=()
    [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    { command -v mosquitto_pub && command -v mosquitto_sub; } >/dev/null 2>&1 || missing+=(mosquitto-clients)
    command -v stdbuf >/dev/null 2>&1 || missing+=(coreutils)
    # broker/tests/certs.rs makes an X.509 v1 certificate as users do.
    [ -x /usr/bin/openssl ] || missing+=(openssl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    # e2e/run.sh is checked with shellcheck by the chart tests.
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    # The bridge's sink tests run these servers (bridge/tests).
    [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
    [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
    # The managed NATS contract test (tests/contract/tests/managed_nats.rs)
    # maps the pods' DNS names in a namespace of each server's own.
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    command -v mount >/dev/null 2>&1 || missing+=(mount)
    # The simulated broker cluster (tests/contract/tests/cluster_rollout.rs)
    # puts HAProxy in front of its replicas.
    [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi

    if ! python_deps_present; then
        if ! python3 -m pip --version >/dev/null 2>&1; then
            apt_install python3-pip
        fi
        echo "installing (pip): tests/interop/requirements.txt"
        # Debian's own python3 refuses pip installs without the override (PEP 668).
        PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
            python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
        python_deps_present || {
            echo "test.sh: paho-mqtt >= 2 and pytest still not importable by python3" >&2
            return 1
        }
    fi

    if ! command -v cargo >/dev/null 2>&1; then
        echo "test.sh: cargo not found: install Rust stable (https://rustup.rs)" >&2
        return 1
    fi
    local component
    for component in rustfmt clippy; do
        local probe="${component/rustfmt/fmt}"
        if ! cargo "$probe" --version >/dev/null 2>&1; then
            if command -v rustup >/dev/null 2>&1; then
                echo "installing (rustup): $component"
                rustup component add "$component"
            else
                echo "test.sh: cargo $probe missing and no rustup to add $component" >&2
                return 1
            fi
        fi
    done
    echo "ready: cargo, rustfmt, clippy, mosquitto, mosquitto-clients, python3 + paho-mqtt + pytest"
}

# ---------------------------------------------------------------------------
# steps

target_dir() {
    cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# clippy's check-only build shares nothing with the real one but build
# scripts; in CI it goes to a directory of its own, removed afterwards, so
# that the disk never holds both (CI machines have little disk).
clippy() {
    if [ "${CI:-}" = "true" ]; then
        local dir
        dir="$(target_dir)/clippy"
        CARGO_TARGET_DIR="$dir" cargo clippy --workspace --all-targets -- -D warnings
        rm -rf "$dir"
    else
        cargo clippy --workspace --all-targets -- -D warnings
    fi
}

# The code's documentation, private items included (links between them
# are how a newcomer finds the way): a broken link or a stray HTML tag is
# an error. In CI its check build has a directory of its own, removed
# afterwards, as clippy's does.
docs_check() {
    local dir=""
    if [ "${CI:-}" = "true" ]; then
        dir="$(target_dir)/doc-check"
    fi
    RUSTDOCFLAGS="-D warnings" CARGO_TARGET_DIR="${dir:-$(target_dir)}" \
        cargo doc --workspace --no-deps --document-private-items
    if [ -n "$dir" ]; then
        rm -rf "$dir"
    fi
}

interop_tests() {
    local target_dir
    target_dir="$(target_dir)"
    KUBEMQTT_INTEROP_BROKER=kubemqtt \
        KUBEMQTT_BROKER_BIN="$target_dir/debug/kubemqtt-broker" \
        python3 -m pytest tests/interop -q
}

main() {
    # One build, not many small edits: incremental compilation would only
    # add gigabytes of cache to target/ (CI machines have little disk).
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
    step "dependencies" install_dependencies
    step "kubernetes manifest checkers" ./scripts/install-k8s-tools.sh
    # In CI the checkers must run, not be skipped.
    if [ "${CI:-}" = "true" ]; then
        export KUBEMQTT_REQUIRE_K8S_TOOLS=1
    fi
    step "cargo fmt" cargo fmt --all -- --check
    step "cargo clippy" clippy
    step "cargo doc" docs_check
    step "cargo build" cargo build --workspace --bins
    step "cargo test" cargo test --workspace
    step "interop tests (paho-mqtt, mosquitto clients, log comparison)" interop_tests

    print_summary
    printf '\ntest.sh: all %d steps succeeded in %ds\n' "${#SUMMARY[@]}" "$((SECONDS - SUITE_START))"
}

main "$@"
