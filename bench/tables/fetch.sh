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
#   galaxy 100000 x 7  pzflow/example_files/galaxy-data.pkl: redshift and LSST u g r i z y
#                      magnitudes of 100,000 galaxies of the Buzzard simulated sky catalogue
#                      (DeRose et al. 2019, arXiv 1901.02401).
#   cities 47966 x 3   pzflow/example_files/city-data.pkl (MaxMind world cities; "This product
#                      includes data created by MaxMind, available from http://www.maxmind.com/"):
#                      log10_population, latitude, longitude of 47,966 cities (country and name
#                      dropped; population as its base-10 logarithm).
# Sources: river 0.26.1 (BSD-3-Clause) and pzflow 4.0.0 (MIT), wheels pinned by file name and
# sha256. The pzflow files are pandas pickles: galaxy and cities need a PYTHON with pandas
# (bench/.venv has it; see bench/python/README.md).
# Writes a numeric CSV with a header row; default OUT is bench/tables/data/<DATASET>.csv.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATASET=${2:-${DATASET:-sp500}}
OUT=${1:-$HERE/data/$DATASET.csv}
PYTHON=${PYTHON:-$(command -v python3)}
PIP=${PIP:-$PYTHON -m pip}

CACHE=${CACHE:-$HERE/data/wheels}

case "$DATASET" in
    yeast|sp500)
        WHEEL=river-0.26.1-cp311-cp311-manylinux_2_28_x86_64.whl
        SHA256=6a11e1a9749beec3ea138efeb0205b2c5cea8d424e9deee306c8980faec01bef
        # Platform flags pin the exact file whatever the host's Python or OS is.
        GET="river==0.26.1 --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311" ;;
    galaxy|cities)
        WHEEL=pzflow-4.0.0-py3-none-any.whl
        SHA256=df593c6849387fc5a9f97175d887db1e966a551fd4787f37312d0eaf0a89401d
        GET="pzflow==4.0.0" ;;
    *) echo "fetch.sh: unknown dataset '$DATASET' (yeast, sp500, galaxy, cities)" >&2; exit 2 ;;
esac

mkdir -p "$CACHE"
if [ ! -f "$CACHE/$WHEEL" ] || ! echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet - >/dev/null 2>&1; then
    rm -f "$CACHE/$WHEEL"
    # shellcheck disable=SC2086
    $PIP download --quiet --no-deps --only-binary=:all: $GET -d "$CACHE"
fi
echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet - || { echo "fetch.sh: sha256 mismatch for $WHEEL" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
"$PYTHON" - "$CACHE/$WHEEL" "$DATASET" "$OUT" <<'PY'
import csv, gzip, io, math, sys, zipfile
wheel, name, out = sys.argv[1:4]
if name in ("galaxy", "cities"):
    import pickle
    try:
        import pandas  # noqa: F401  (the pickles are pandas DataFrames)
    except ImportError:
        sys.exit(f"fetch.sh: {name} needs a PYTHON with pandas (PYTHON=bench/.venv/bin/python)")
    member = f"pzflow/example_files/{ {'galaxy': 'galaxy-data', 'cities': 'city-data'}[name] }.pkl"
    df = pickle.loads(zipfile.ZipFile(wheel).read(member))
    if name == "galaxy":
        header = [str(c) for c in df.columns]
        data = df.to_numpy(dtype=float).tolist()
        expect = (100000, 7)
    else:
        header = ["log10_population", "latitude", "longitude"]
        data = [[math.log10(p), la, lo] for p, la, lo in
                zip(df["Population"], df["Latitude"], df["Longitude"])]
        expect = (47966, 3)
    keep = list(range(len(header)))
    body = [[repr(v) for v in r] for r in data]
else:
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
tmp = out + ".tmp"
with open(tmp, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow([header[j] for j in keep])
    for r, src in zip(data, body):
        w.writerow([src[j] for j in keep])  # the values exactly as shipped
import os; os.replace(tmp, out)
print(f"{out}: {len(data)} rows x {len(keep)} columns ({name}, from {member})", file=sys.stderr)
PY
