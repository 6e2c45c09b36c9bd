#!/usr/bin/env bash
# Build glowflow with `--features cuda` on a machine that reaches only the package registries.
#
#   scripts/build-cuda.sh                 # release build into target/cuda/release/glowflow
#   scripts/build-cuda.sh --bin glowflow  # extra arguments go to `cargo build`
#
# burn's CUDA backend (cubecl-cuda 0.11) compiles kernels with LLVM, and its build dependency
# tracel-llvm-bundler 23.1.0-4 downloads an LLVM 23.1 bundle from GitHub at build time. Instead,
# this script assembles the same kind of SDK from two pinned PyPI wheels (mlc-llvm-static and its
# extra-targets wheel, which adds NVPTX; Apache-2.0 WITH LLVM-exception) and puts it where the
# bundler looks first: `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/`, with the bundler's
# `.tracel-llvm-installed` marker. The bundler then runs that directory's `bin/llvm-config` and
# downloads nothing.
#
# Needs: the Rust toolchain, python3 with pip (to fetch the wheels). The SDK lives under
# target/llvm-sdk (about 1 GB unpacked; reused by later builds). The build goes to target/cuda so
# it does not disturb the default (CPU) build in target/release.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SDK_HOME=${GLOWFLOW_LLVM_HOME:-$ROOT/target/llvm-sdk}
DEST=$SDK_HOME/tracel/tracel-llvm-23.1.0-4
WHEELS=$SDK_HOME/wheels
VERSION=23.1.1.post0
BASE=mlc_llvm_static-$VERSION-py3-none-manylinux_2_28_x86_64.whl
EXTRA=mlc_llvm_static_extra_targets-$VERSION-py3-none-manylinux_2_28_x86_64.whl
BASE_SHA256=dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5
EXTRA_SHA256=c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929

if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
    echo "build-cuda.sh: the pinned LLVM wheels are for Linux x86-64 only" >&2
    exit 2
fi

if [ ! -f "$DEST/.tracel-llvm-installed" ]; then
    mkdir -p "$WHEELS"
    if [ ! -f "$WHEELS/$BASE" ] || [ ! -f "$WHEELS/$EXTRA" ]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --platform manylinux_2_28_x86_64 --python-version 3.11 \
            -d "$WHEELS" "mlc-llvm-static==$VERSION" "mlc-llvm-static-extra-targets==$VERSION"
    fi
    (cd "$WHEELS" && sha256sum --check --strict --quiet) <<EOF
$BASE_SHA256  $BASE
$EXTRA_SHA256  $EXTRA
EOF
    rm -rf "$DEST.partial"
    mkdir -p "$DEST.partial"
    # The SDK is each wheel's mlc_llvm_static/static/ folder; the extra targets go over the base.
    python3 - "$WHEELS/$BASE" "$WHEELS/$EXTRA" "$DEST.partial" <<'PY'
import os, stat, sys, zipfile
*wheels, dest = sys.argv[1:]
prefix = "mlc_llvm_static/static/"
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            target = os.path.join(dest, info.filename[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            mode = info.external_attr >> 16
            if mode & stat.S_IXUSR:
                os.chmod(target, 0o755)
PY
    "$DEST.partial/bin/llvm-config" --version | grep -q '^23\.' \
        || { echo "build-cuda.sh: the unpacked llvm-config is not LLVM 23" >&2; exit 1; }
    "$DEST.partial/bin/llvm-config" --targets-built | grep -qw NVPTX \
        || { echo "build-cuda.sh: the unpacked LLVM lacks the NVPTX target" >&2; exit 1; }
    rm -rf "$DEST"
    mv "$DEST.partial" "$DEST"
    touch "$DEST/.tracel-llvm-installed"
fi

cd "$ROOT"
XDG_DATA_HOME=$SDK_HOME CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda} \
    cargo build --release --features cuda "$@"
