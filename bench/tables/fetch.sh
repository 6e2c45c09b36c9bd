#!/usr/bin/env bash
# Real tabular data for density-estimation benchmarks, taken from a file shipped inside a
# pinned PyPI wheel (nothing is downloaded from anywhere but PyPI, through pip).
#
#   bench/tables/fetch.sh [OUT.csv] [DATASET]
#
# DATASET (default sp500; also settable as $DATASET):
#   yeast  2417 x 103  river/datasets/yeast.csv.gz, features Att1..Att103 (gene micro-array
#                      expression + phylogenetic profiles; Elisseeff & Weston 2001, MULAN/OpenML
#                      40597). The 14 label columns Class1..Class14 are dropped.
#   sp500  1257 x 10   river/datasets/sp500.csv.gz, daily % returns of AAPL AMZN IBM INTC JNJ JPM
#                      KO MSFT WMT XOM, Feb 2013 - Feb 2018 (subset of Kaggle "camnugent/sandp500").
#                      The date and next_day_return columns are dropped.
# Source: river 0.26.1 (BSD-3-Clause), wheel pinned by file name and sha256.
# Writes a numeric CSV with a header row; default OUT is bench/tables/data/<DATASET>.csv.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATASET=${2:-${DATASET:-sp500}}
OUT=${1:-$HERE/data/$DATASET.csv}
PYTHON=${PYTHON:-$(command -v python3)}
PIP=${PIP:-$PYTHON -m pip}

WHEEL=river-0.26.1-cp311-cp311-manylinux_2_28_x86_64.whl
SHA256=6a11e1a9749beec3ea138efeb0205b2c5cea8d424e9deee306c8980faec01bef
CACHE=${CACHE:-$HERE/data/wheels}

case "$DATASET" in
    yeast|sp500) ;;
    *) echo "fetch.sh: unknown dataset '$DATASET' (yeast, sp500)" >&2; exit 2 ;;
esac

mkdir -p "$CACHE"
if [ ! -f "$CACHE/$WHEEL" ] || ! echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet - >/dev/null 2>&1; then
    rm -f "$CACHE/$WHEEL"
    # Platform flags pin the exact file whatever the host's Python or OS is.
    $PIP download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
        river==0.26.1 -d "$CACHE"
fi
echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet - || { echo "fetch.sh: sha256 mismatch for $WHEEL" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
"$PYTHON" - "$CACHE/$WHEEL" "$DATASET" "$OUT" <<'PY'
import csv, gzip, io, math, sys, zipfile
wheel, name, out = sys.argv[1:4]
member = {"yeast": "river/datasets/yeast.csv.gz", "sp500": "river/datasets/sp500.csv.gz"}[name]
text = gzip.decompress(zipfile.ZipFile(wheel).read(member)).decode("utf-8")
rows = list(csv.reader(io.StringIO(text)))
header, body = rows[0], [r for r in rows[1:] if r]
if name == "yeast":
    keep = [j for j, h in enumerate(header) if h.startswith("Att")]
    expect = (2417, 103)
else:
    keep = [j for j, h in enumerate(header) if h not in ("date", "next_day_return")]
    expect = (1257, 10)
data = [[float(r[j]) for j in keep] for r in body]
assert all(math.isfinite(v) for r in data for v in r), "non-finite value"
assert (len(data), len(keep)) == expect, (len(data), len(keep))
tmp = out + ".tmp"
with open(tmp, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow([header[j] for j in keep])
    for r, src in zip(data, body):
        w.writerow([src[j] for j in keep])  # the values exactly as shipped
import os; os.replace(tmp, out)
print(f"{out}: {len(data)} rows x {len(keep)} columns ({name}, from {member})", file=sys.stderr)
PY
