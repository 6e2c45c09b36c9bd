#!/usr/bin/env bash
# The GPU check, in two halves: build here, run on the GPU machine.
#
#   scripts/device-check.sh prepare   # build machine: CUDA build, strip, pack into target/device-check
#   scripts/device-check.sh run       # GPU machine: CUDA test suite, bench, PyTorch side by side
#
# `prepare` needs what scripts/build-cuda.sh needs (Rust, python3 with pip, the registries) and
# strip, xz. It leaves in target/device-check (about 65 MB):
#   glowflow.xz      the release binary with --features cuda, stripped
#   gpu-tests.xz     the device suite (tests/gpu.rs: the layer, model, conditioning and training
#                    tests in one executable), stripped
#   cuda/nvvm/libdevice/libdevice.10.bc   NVIDIA's math bitcode (exp, log, tanh, ...), from the
#                    pinned, hash-checked nvidia-cuda-nvcc-cu12 wheel (CUDA_PATH points here)
#
# `run` is started in the root of a copy of this source tree (the tests read tests/fixtures;
# the PyTorch side runs bench/pytorch/bench.py) with target/device-check beside it. It needs the
# NVIDIA driver (libcuda.so.1, nvidia-smi) and python3 or xz; PyTorch with CUDA is optional;
# with two GPUs or more, NCCL (libnccl.so, or PyTorch's nvidia-nccl-cu12, found and linked). It
# prints everything and keeps it in ${OUT:-target/device-check/out}:
#   gpus.txt           nvidia-smi's name, memory and driver of every GPU
#   tests.txt          the device suite on cuda (and the two-GPU data-parallel test with >= 2 GPUs)
#   bench.jsonl        `glowflow bench --device cuda` for seed2d, probe-image and image
#   compare.txt        the same workloads against PyTorch on the GPU (bench/compare.py), if
#                      PyTorch can use CUDA there; otherwise bench.txt has the absolute figures
#                      (steps/s, points or images/s) with the GPU's name
# Environment: ROUNDS (PyTorch comparison rounds, default 3), WORKLOADS (default
# "seed2d probe-image image"), TEST_TIMEOUT / BENCH_TIMEOUT (seconds, default 420 / 120).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAGE=${GLOWFLOW_DEVICE_CHECK:-$ROOT/target/device-check}
NVCC_WHEEL=nvidia_cuda_nvcc_cu12-12.9.86-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
NVCC_SHA256=5d6a0d32fdc7ea39917c20065614ae93add6f577d840233237ff08e9a38f58f0
WORKLOADS=${WORKLOADS:-seed2d probe-image image}

prepare() {
    cd "$ROOT"
    local target=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
    CARGO_TARGET_DIR=$target "$ROOT/scripts/build-cuda.sh"
    # The test executable's path comes from cargo's own report of what it built.
    local tests
    tests=$(CARGO_TARGET_DIR=$target "$ROOT/scripts/build-cuda.sh" --test gpu \
        --message-format=json-render-diagnostics |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
    [ -x "$tests" ] || { echo "device-check: cargo built no device suite" >&2; exit 1; }
    rm -rf "$STAGE"
    mkdir -p "$STAGE/cuda/nvvm/libdevice" "$STAGE/wheels"
    strip -o "$STAGE/glowflow" "$target/release/glowflow"
    strip -o "$STAGE/gpu-tests" "$tests"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux2014_x86_64 --python-version 3.11 \
        -d "$STAGE/wheels" "nvidia-cuda-nvcc-cu12==12.9.86"
    (cd "$STAGE/wheels" && echo "$NVCC_SHA256  $NVCC_WHEEL" | sha256sum --check --strict --quiet)
    python3 - "$STAGE/wheels/$NVCC_WHEEL" "$STAGE/cuda/nvvm/libdevice/libdevice.10.bc" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(dest, "wb") as out:
    out.write(z.read("nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc"))
PY
    rm -rf "$STAGE/wheels"
    xz -6 -T0 "$STAGE/glowflow" "$STAGE/gpu-tests"
    du -sh "$STAGE"
    ls -l "$STAGE" "$STAGE/cuda/nvvm/libdevice"
}

# Unpack NAME.xz to NAME (xz, or Python's lzma where xz is missing).
unpack() {
    local f=$STAGE/$1
    if [ -f "$f.xz" ] && { [ ! -x "$f" ] || [ "$f.xz" -nt "$f" ]; }; then
        if command -v xz >/dev/null; then
            xz -dc "$f.xz" >"$f.part"
        else
            python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$f.xz" "$f.part"
        fi
        chmod +x "$f.part"
        mv "$f.part" "$f"
    fi
    [ -x "$f" ] || { echo "device-check: $f missing; run 'scripts/device-check.sh prepare' first" >&2; exit 1; }
}

run() {
    cd "$ROOT"
    local out=${OUT:-$STAGE/out}
    mkdir -p "$out"
    unpack glowflow
    unpack gpu-tests
    export CUDA_PATH=$STAGE/cuda
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
        | tee "$out/gpus.txt"
    local gpus name
    gpus=$(grep -c . "$out/gpus.txt" || true)
    name=$(head -n1 "$out/gpus.txt" | cut -d, -f2 | sed 's/^ *//')
    [ "$gpus" -ge 1 ] || { echo "device-check: nvidia-smi lists no GPU" >&2; exit 1; }
    lscpu | grep -m1 'Model name' | tee -a "$out/gpus.txt" || true

    echo "== device suite on cuda ($gpus GPU(s))"
    local devices="" status=0
    if [ "$gpus" -ge 2 ]; then
        devices=cuda:0,cuda:1
        # NCCL (the all-reduce) is loaded as libnccl.so: PyTorch's nvidia-nccl-cu12 has it as
        # libnccl.so.2, so a link to it goes on the loader's path.
        local nccl
        nccl=$(python3 -c 'import glob, nvidia.nccl, os; print(glob.glob(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so*"))[0])' 2>/dev/null || true)
        if [ -n "$nccl" ]; then
            mkdir -p "$STAGE/nccl"
            ln -sf "$nccl" "$STAGE/nccl/libnccl.so"
            export LD_LIBRARY_PATH=$STAGE/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        elif ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then
            echo "device-check: no NCCL found (libnccl.so, or python's nvidia-nccl-cu12): the two-GPU test will fail on it" >&2
        fi
    fi
    env GLOWFLOW_TEST_DEVICE=cuda ${devices:+GLOWFLOW_TEST_DEVICES=$devices} \
        timeout "${TEST_TIMEOUT:-420}" "$STAGE/gpu-tests" 2>&1 | tee "$out/tests.txt" || status=1
    [ -n "$devices" ] || echo "(one GPU: the two-GPU data-parallel test reports itself skipped)"

    echo "== glowflow bench --device cuda on $name"
    : >"$out/bench.jsonl"
    for w in $WORKLOADS; do
        timeout "${BENCH_TIMEOUT:-120}" "$STAGE/glowflow" bench --workload "$w" --device cuda \
            | tee -a "$out/bench.txt" || status=1
        timeout "${BENCH_TIMEOUT:-120}" "$STAGE/glowflow" bench --workload "$w" --device cuda --json \
            >>"$out/bench.jsonl" || status=1
    done

    if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "== against PyTorch $(python3 -c 'import torch; print(torch.__version__)') on $name"
        python3 -W ignore bench/compare.py --ours "$STAGE/glowflow" --device cuda \
            --rounds "${ROUNDS:-3}" --threads "$(nproc)" --out "$out/compare.jsonl" $WORKLOADS \
            | tee "$out/compare.txt" || status=1
    else
        echo "== no PyTorch with CUDA here: the absolute figures above (steps/s, points or images/s) on $name are the result"
    fi
    exit $status
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: scripts/device-check.sh prepare|run" >&2
    exit 2
    ;;
esac
