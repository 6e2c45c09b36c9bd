#!/usr/bin/env bash
# Run every glowflow command of the documentation, on a short budget.
#
#   scripts/docs-commands.sh [BINARY]        # default: target/release/glowflow
#
# Reads the fenced code blocks (no language, sh, bash, shell or console) of README.md and then
# docs/vectors.md, images.md, conditioning.md, quality.md, runs.md, speed.md, gpu.md, library.md
# and any other docs/*.md, in that order, joins `\` continuations, drops `# comments`, and takes
# every line that starts with `glowflow`, `target/.../glowflow` or `cargo run --release --`.
# Each runs with BINARY in one temporary directory, in file order, so a command that reads a run
# (`--checkpoint runs/x`, `--resume runs/x`) finds the run an earlier command trained there; its
# `bench/` is a link to the repository's, so `--data bench/...` reads the repository's tables.
#
# The budget (printed at the start, applied to the command line shown on each result line):
#   train2d, compare      --steps STEPS (2 x STEPS with --resume); fresh runs on a 2D target also
#                         --test-samples 2000 --grid 64 --frames 2
#   train                 --steps STEPS (2 x STEPS with --resume), --test-limit 100; --time-limit
#                         dropped; fresh runs also --warmup 4
#   ablation              --steps STEPS --stages 2 --warmup 4 --test-limit 100 --quality-n 200
#                         --classifier-steps 20 --cache TMP/cache; --time-limit dropped
#   quality               --n 200 --classifier-steps 20 --cache TMP/cache
#   attribute             --limit 200
#   bench                 --steps 2 --warmup 1
#   training commands     --force when an earlier command already trained into the same --out
#   idx:/usr/share/datasets/fashion-mnist   a copy of its first 2,000 training and 500 test
#                         images (with labels)
#   new_days.csv          a placeholder: the header and last 100 rows of bench/tables/data/sp500.csv
# Skipped, and listed as such: lines that are not glowflow commands (cargo test, pip, apt-get,
# scripts/..., bench/...), commands for the CUDA build (`--device cuda...`, target/cuda/...,
# `cargo run --features ...`), commands whose --data is not on this machine, and commands that
# read a run whose training was skipped.
#
# Environment: STEPS (default 12), KEEP=1 keeps the temporary directory, TIMEOUT (seconds per
# command, default 600), DRY_RUN=1 lists the commands as they would run and runs none.
# Exit status: 0 when every command that ran succeeded, 1 when any failed, 2 on a usage error or
# when no command was found.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$REPO/target/release/glowflow}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
if [ ! -x "$BIN" ]; then
    echo "docs-commands: no executable at $BIN (build it with cargo build --release, or pass its path)" >&2
    exit 2
fi
STEPS=${STEPS:-12}
FASHION=/usr/share/datasets/fashion-mnist     # where the docs read Fashion-MNIST from
TIMEOUT=${TIMEOUT:-600}
START=$(date +%s)

W=$(mktemp -d "${TMPDIR:-/tmp}/glowflow-docs.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
    echo "work directory (kept): $W"
else
    trap 'rm -rf "$W"' EXIT
fi
ln -s "$REPO/bench" "$W/bench"
mkdir -p "$W/logs" "$W/cache"

# ---- the files, in reading order -----------------------------------------------------------
FILES=("$REPO/README.md")
for page in vectors images conditioning quality runs speed gpu library; do
    [ -f "$REPO/docs/$page.md" ] && FILES+=("$REPO/docs/$page.md")
done
for f in "$REPO"/docs/*.md; do
    case " ${FILES[*]} " in *" $f "*) ;; *) [ -f "$f" ] && FILES+=("$f") ;; esac
done

# ---- small stand-ins for large or absent inputs ---------------------------------------------
SMALL_FASHION=""
# bytes B...: the bytes of these values (0-255).
bytes() { local s="" b; for b; do s+=$(printf '\\x%02x' "$b"); done; printf "$s"; }
# idx_head SRC DST COUNT: the first COUNT items of an IDX file (raw or .gz), written raw.
idx_head() {
    local src=$1 dst=$2 n=$3 reader=cat
    case "$src" in *.gz) reader="gzip -dc" ;; esac
    local -a h
    read -ra h <<< "$($reader "$src" 2>/dev/null | head -c 16 | od -An -tu1 -v | tr -s ' \n' '  ')"
    local ndim=${h[3]} item=1 i
    for ((i = 0; i < ndim - 1; i++)); do
        item=$((item * ((h[8 + 4 * i] << 24) | (h[9 + 4 * i] << 16) | (h[10 + 4 * i] << 8) | h[11 + 4 * i])))
    done
    local hdr=$((4 + 4 * ndim))
    {
        bytes "${h[0]}" "${h[1]}" "${h[2]}" "${h[3]}" $(((n >> 24) & 255)) $(((n >> 16) & 255)) $(((n >> 8) & 255)) $((n & 255))
        $reader "$src" 2>/dev/null | head -c "$((hdr + n * item))" | tail -c "+9"
    } > "$dst"
    [ "$(wc -c < "$dst")" -eq "$((hdr + n * item))" ]
}
pick() { if [ -f "$1.gz" ]; then echo "$1.gz"; else echo "$1"; fi; }
if [ -d "$FASHION" ]; then
    SMALL_FASHION=$W/fashion-mnist-small
    mkdir -p "$SMALL_FASHION"
    ok=1
    for spec in train-images-idx3-ubyte:2000 train-labels-idx1-ubyte:2000 \
                t10k-images-idx3-ubyte:500 t10k-labels-idx1-ubyte:500; do
        idx_head "$(pick "$FASHION/${spec%%:*}")" "$SMALL_FASHION/${spec%%:*}" "${spec##*:}" || ok=0
    done
    if [ "$ok" = 0 ]; then
        echo "docs-commands: could not copy the first images of $FASHION" >&2
        exit 2
    fi
fi
if [ -f "$REPO/bench/tables/data/sp500.csv" ]; then
    { head -n 1 "$REPO/bench/tables/data/sp500.csv"; tail -n 100 "$REPO/bench/tables/data/sp500.csv"; } \
        > "$W/new_days.csv"
fi

echo "binary: $BIN"
echo "budget: train2d/compare --steps $STEPS (resume $((2 * STEPS))), on 2D targets --test-samples 2000 --grid 64 --frames 2;" \
     "train --steps $STEPS --warmup 4 --test-limit 100, no --time-limit;" \
     "ablation --steps $STEPS --stages 2 --quality-n 200 --classifier-steps 20;" \
     "quality --n 200 --classifier-steps 20; attribute --limit 200; bench --steps 2 --warmup 1"
if [ -n "$SMALL_FASHION" ]; then
    echo "data: idx:$FASHION -> its first 2,000 training and 500 test images"
else
    echo "data: $FASHION is absent (apt-get install dataset-fashion-mnist): its commands are skipped"
fi
[ -f "$W/new_days.csv" ] && echo "placeholder: new_days.csv = the header and last 100 rows of bench/tables/data/sp500.csv"
echo

# ---- extraction -----------------------------------------------------------------------------
# One record per command line: FILE:LINE <TAB> the joined line.
extract() {
    awk '
        FNR == 1 { fence = 0; cont = 0 }
        /^[ \t]*```/ {
            if (!fence) {
                fence = 1; lang = $0; sub(/^[ \t]*```[ \t]*/, "", lang); sub(/[ \t].*$/, "", lang)
                shell = (lang == "" || lang == "sh" || lang == "bash" || lang == "shell" || lang == "console")
            } else { fence = 0 }
            cont = 0; next
        }
        fence && shell {
            if (cont) buf = buf " " $0; else { buf = $0; start = FNR }
            if (buf ~ /\\[ \t]*$/) { sub(/\\[ \t]*$/, "", buf); cont = 1; next }
            cont = 0
            buf = " " buf; sub(/[ \t]#.*$/, "", buf)
            gsub(/[ \t]+/, " ", buf); sub(/^ /, "", buf); sub(/ $/, "", buf); sub(/^\$ /, "", buf)
            if (buf != "") { name = FILENAME; sub(/^.*\//, "", name); if (FILENAME ~ /\/docs\/[^\/]*$/) name = "docs/" name
                             print name ":" start "\t" buf }
        }
    ' "$@"
}

# ---- argument helpers (ARGS is the command's argument array) ---------------------------------
has() { local a; for a in "${ARGS[@]}"; do [[ $a == "$1" || $a == "$1="* ]] && return 0; done; return 1; }
get() {
    local i
    for ((i = 0; i < ${#ARGS[@]}; i++)); do
        [[ ${ARGS[i]} == "$1" ]] && { echo "${ARGS[i + 1]:-}"; return 0; }
        [[ ${ARGS[i]} == "$1="* ]] && { echo "${ARGS[i]#*=}"; return 0; }
    done
    return 1
}
drop() {
    local -a out=(); local i
    for ((i = 0; i < ${#ARGS[@]}; i++)); do
        if [[ ${ARGS[i]} == "$1" ]]; then i=$((i + 1)); continue; fi
        [[ ${ARGS[i]} == "$1="* ]] && continue
        out+=("${ARGS[i]}")
    done
    ARGS=("${out[@]}")
}
set_flag() { drop "$1"; ARGS+=("$1" "$2"); }
add_switch() { has "$1" || ARGS+=("$1"); }
run_key() { local p=${1%/}; p=${p%/checkpoint}; p=${p#./}; echo "$p"; }

# ---- the budget -------------------------------------------------------------------------------
budget() {
    local sub=${ARGS[0]} resume=0
    has --resume && resume=1
    # Data stand-ins.
    local i
    for ((i = 0; i < ${#ARGS[@]}; i++)); do
        if [ -n "$SMALL_FASHION" ]; then
            ARGS[i]=${ARGS[i]//idx:$FASHION/idx:$SMALL_FASHION}
        fi
    done
    case "$sub" in
        train2d|train-vectors|compare)
            set_flag --steps $((resume ? 2 * STEPS : STEPS))
            if [ $resume = 0 ] && ! has --data; then
                set_flag --test-samples 2000; set_flag --grid 64; set_flag --frames 2
            fi ;;
        train)
            set_flag --steps $((resume ? 2 * STEPS : STEPS))
            drop --time-limit
            set_flag --test-limit 100
            [ $resume = 0 ] && set_flag --warmup 4 ;;
        ablation)
            set_flag --steps "$STEPS"; set_flag --stages 2; set_flag --warmup 4
            drop --time-limit; set_flag --test-limit 100; set_flag --quality-n 200
            set_flag --classifier-steps 20; set_flag --cache "$W/cache" ;;
        quality)
            set_flag --n 200; set_flag --classifier-steps 20; set_flag --cache "$W/cache" ;;
        attribute)
            set_flag --limit 200 ;;
        bench)
            set_flag --steps 2; set_flag --warmup 1 ;;
    esac
    case "$sub" in
        train2d|train-vectors|compare|train|ablation)
            if [ $resume = 0 ]; then
                local out
                out=$(get --out) || case "$sub" in
                    compare) out=runs/compare ;; train2d|train-vectors) out=runs/train2d ;; *) out=runs/train ;;
                esac
                [ -e "$W/$out" ] && add_switch --force
            fi ;;
    esac
}

# The run a training command writes (empty for other commands).
trained_run() {
    case "${ARGS[0]}" in
        train2d|train-vectors|compare|train|ablation) ;;
        *) return 0 ;;
    esac
    local out
    if out=$(get --out); then run_key "$out"
    elif out=$(get --resume); then run_key "$out"
    else case "${ARGS[0]}" in compare) echo runs/compare ;; train2d|train-vectors) echo runs/train2d ;; *) echo runs/train ;; esac
    fi
}

# Why a glowflow command cannot run here (empty when it can).
skip_reason() {
    local a v d
    for a in "${ARGS[@]}"; do
        case "$a" in --device=cuda*) echo "needs the CUDA build and a GPU"; return ;; esac
    done
    if v=$(get --device) && [[ $v == cuda* ]]; then echo "needs the CUDA build and a GPU"; return; fi
    for a in --data --test-data; do
        v=$(get "$a") || continue
        case "$v" in
            idx:*|cifar10:*|folder:*) d=${v#*:} ;;
            *) d=$v ;;
        esac
        case "$d" in /*) ;; *) d=$W/$d ;; esac
        [ -e "$d" ] || { echo "data not present: $v"; return; }
    done
    for a in --checkpoint --resume; do
        v=$(get "$a") || continue
        v=$(run_key "$v")
        case " $SKIPPED_RUNS " in *" $v "*) echo "reads $v, whose training was skipped"; return ;; esac
    done
}

# ---- run ------------------------------------------------------------------------------------
TIMEOUT_CMD=()
command -v timeout > /dev/null 2>&1 && TIMEOUT_CMD=(timeout "$TIMEOUT")
SKIPPED_RUNS=""
n_ok=0 n_failed=0 n_skipped=0 n=0
FAILED_LIST=""
while IFS=$'\t' read -r where line; do
    n=$((n + 1))
    read -ra WORDS <<< "$line"
    ARGS=()
    cuda_binary=0
    if [[ ${WORDS[0]} == cargo && ${WORDS[1]:-} == run ]]; then
        j=-1
        for ((i = 2; i < ${#WORDS[@]}; i++)); do [[ ${WORDS[i]} == -- ]] && { j=$i; break; }; done
        if ((j < 0)); then
            echo "skip     $where  $line  (cargo run without a glowflow command)"; n_skipped=$((n_skipped + 1)); continue
        fi
        case " ${WORDS[*]:0:j} " in *" --features"*) cuda_binary=1 ;; esac
        ARGS=("${WORDS[@]:j+1}")
    elif [[ ${WORDS[0]##*/} == glowflow ]]; then
        [[ ${WORDS[0]} == *cuda* ]] && cuda_binary=1
        ARGS=("${WORDS[@]:1}")
    else
        echo "skip     $where  $line  (not a glowflow command)"; n_skipped=$((n_skipped + 1)); continue
    fi
    if ((${#ARGS[@]} == 0)); then
        echo "skip     $where  $line  (no subcommand)"; n_skipped=$((n_skipped + 1)); continue
    fi
    reason=$(skip_reason)
    [ $cuda_binary = 1 ] && [ -z "$reason" ] && reason="needs the CUDA build and a GPU"
    if [ -n "$reason" ]; then
        run=$(trained_run); [ -n "$run" ] && SKIPPED_RUNS="$SKIPPED_RUNS $run"
        echo "skip     $where  glowflow ${ARGS[*]}  ($reason)"; n_skipped=$((n_skipped + 1)); continue
    fi
    budget
    shown="glowflow ${ARGS[*]}"
    shown=${shown//$W\//TMP/}
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "run      $where  $shown"; n_ok=$((n_ok + 1))
        run=$(trained_run); [ -n "$run" ] && mkdir -p "$W/$run"
        continue
    fi
    log=$W/logs/$n.log
    t0=$(date +%s.%N)
    (cd "$W" && "${TIMEOUT_CMD[@]}" "$BIN" "${ARGS[@]}") > "$log" 2>&1 < /dev/null
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ $rc = 0 ]; then
        printf 'ok       %s  %s  (%s s)\n' "$where" "$shown" "$secs"
        n_ok=$((n_ok + 1))
    else
        printf 'FAILED   %s  %s  (exit %s, %s s)\n' "$where" "$shown" "$rc" "$secs"
        tail -n 8 "$log" | sed 's/^/         | /'
        n_failed=$((n_failed + 1))
        FAILED_LIST="$FAILED_LIST $where"
    fi
done < <(extract "${FILES[@]}")

echo
echo "$n command lines: $n_ok ok, $n_failed failed, $n_skipped skipped ($(( $(date +%s) - START )) s)"
[ $n_failed -gt 0 ] && { echo "failed:$FAILED_LIST"; exit 1; }
[ $n_ok -eq 0 ] && { echo "docs-commands: no command ran" >&2; exit 2; }
exit 0
