#!/usr/bin/env bash
# glowflow vs its PyTorch reference on the same workloads, alternating A B A B.
#
#   bench/compare.sh                      # all workloads, 3 rounds, 2 threads
#   ROUNDS=5 THREADS=1 WORKLOADS="probe2d seed2d" bench/compare.sh
#   DEVICE=cuda bench/compare.sh          # GPU: glowflow built with --features cuda
#   WORKLOADS=paper-cifar ROUNDS=1 bench/compare.sh   # the Glow paper's CIFAR-10 model (ours ~4 GiB, PyTorch ~7.6; minutes)
#
# Installs PyTorch into bench/.venv on first use (from PyPI; TORCH=... picks the version).
# Prints a Markdown table of medians and the ratio ours/PyTorch in steps/s (> 1: we are faster),
# and leaves every run's JSON in target/bench/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-bench/.venv}
PYTHON=${PYTHON:-$VENV/bin/python}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${TORCH:-torch==2.15.0}"
    PYTHON=$VENV/bin/python
fi

if [ "${DEVICE:-flex}" = cuda ]; then
    cargo build --release -q --features cuda
else
    cargo build --release -q
fi

exec "$PYTHON" -W ignore bench/compare.py \
    --ours target/release/glowflow \
    --rounds "${ROUNDS:-3}" \
    --threads "${THREADS:-2}" \
    --device "${DEVICE:-flex}" \
    --out target/bench/results.jsonl \
    ${WORKLOADS:-probe2d seed2d probe-image image sample density-grid}
