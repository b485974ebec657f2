#!/usr/bin/env bash
# Installs the offline Kubernetes manifest checkers the test suite uses into
# .tools/ (gitignored), from PyPI only, idempotently:
#   .tools/bin/kubernetes-validate   PyPI kubernetes-validate (schemas 1.25-1.37)
#   .tools/bin/crd-structural-check  copied from ../shared/tools when present
# The examples test finds them in .tools/bin.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PREFIX=.tools
KV_VERSION=1.37.0
mkdir -p "$PREFIX/bin"

if [ -x "$PREFIX/bin/kubernetes-validate" ] \
    && "$PREFIX/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
    echo "kubernetes-validate $KV_VERSION already in $PREFIX/bin"
else
    echo "installing (pip): kubernetes-validate==$KV_VERSION into $PREFIX/venv"
    python3 -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KV_VERSION" pyyaml
    ln -sf "../venv/bin/kubernetes-validate" "$PREFIX/bin/kubernetes-validate"
fi

# The structural-schema checker ships in the team's shared tools; a user
# without them still gets every other check.
if [ -f ../shared/tools/crd-structural-check ]; then
    install -m 0755 ../shared/tools/crd-structural-check "$PREFIX/bin/crd-structural-check"
    # It runs with a python that has PyYAML: the venv's.
    sed -i "1s|.*|#!$(pwd)/$PREFIX/venv/bin/python3|" "$PREFIX/bin/crd-structural-check"
else
    echo "note: ../shared/tools/crd-structural-check not found; the CRD structural check will be skipped"
fi
