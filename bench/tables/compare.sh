#!/usr/bin/env bash
# Density estimation on a real table, side by side on one split with the same steps and batch:
# glowflow's vector Glow and Real NVP, zuko's RealNVP (PyTorch), and a full-covariance Gaussian
# fitted to the training rows. Test NLL in nats per row, in the data's own units.
#
#   bench/tables/compare.sh            # sp500 (bench/tables/fetch.sh), seeds 0 1 2
#   DATA=my.csv SEEDS="0 1" STEPS=300 bench/tables/compare.sh
#
# Needs: cargo, and a Python with torch and zuko (PYTHON, default bench/.venv/bin/python).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DATA=${DATA:-$HERE/data/sp500.csv}
PYTHON=${PYTHON:-$ROOT/bench/.venv/bin/python}
STEPS=${STEPS:-200} BATCH=${BATCH:-128} LR=${LR:-1e-3}
LAYERS=${LAYERS:-4} HIDDEN=${HIDDEN:-32} SEEDS=${SEEDS:-"0 1 2"} THREADS=${THREADS:-1}
[ -f "$DATA" ] || "$HERE/fetch.sh" "$DATA"
(cd "$ROOT" && cargo build --release --quiet)
GF=$ROOT/target/release/glowflow
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# One held-out split for every model: glowflow's seeded draw of 20% (split.csv), written out as
# a training and a test table.
"$GF" train2d --data "$DATA" --steps 1 --batch 2 --layers 1 --quiet --out "$WORK/split" >/dev/null
"$PYTHON" - "$DATA" "$WORK/split/split.csv" "$WORK" <<'PY'
import sys
data, split, work = sys.argv[1:]
lines = open(data).read().splitlines()
flags = [l.split(",")[1] for l in open(split).read().splitlines()[1:]]
assert len(flags) == len(lines) - 1, "split.csv does not match the table"
for name, want in (("train", "0"), ("test", "1")):
    rows = [l for l, f in zip(lines[1:], flags) if f == want]
    open(f"{work}/{name}.csv", "w").write("\n".join([lines[0]] + rows) + "\n")
PY

echo "| model | seed | test NLL | train NLL | Gaussian test NLL | parameters | train s |"
echo "|---|---|---|---|---|---|---|"
for seed in $SEEDS; do
    for model in glow realnvp; do
        "$GF" train2d --model $model --data "$WORK/train.csv" --test-data "$WORK/test.csv" \
            --seed "$seed" --steps "$STEPS" --batch "$BATCH" --lr "$LR" --layers "$LAYERS" \
            --hidden "$HIDDEN" --threads "$THREADS" --quiet --out "$WORK/$model-$seed" >/dev/null
        "$PYTHON" -c "
import json; s = json.load(open('$WORK/$model-$seed/summary.json'))
print(f\"| glowflow $model | $seed | {s['test_nll']:.4f} | {s['train_nll']:.4f} | {s['gaussian_test_nll']:.4f} | {s['parameters']} | {s['train_seconds']:.2f} |\")"
    done
    "$PYTHON" "$HERE/zuko_table.py" --data "$DATA" --split-file "$WORK/split/split.csv" \
        --seed "$seed" --steps "$STEPS" --batch "$BATCH" --lr "$LR" --transforms "$LAYERS" \
        --hidden "$HIDDEN" --threads "$THREADS" | tail -1 | "$PYTHON" -c "
import json, sys; s = json.loads(sys.stdin.read())
print(f\"| zuko RealNVP | $seed | {s['test_nll']:.4f} | {s['train_nll']:.4f} | {s['gaussian_test_nll']:.4f} | {s['params']} | {s['seconds']:.2f} |\")"
done
