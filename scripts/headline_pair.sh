#!/usr/bin/env bash
# The paper's headline pair at full length on a CPU: cifar10-lt-ldam-drw (SGD) and cifar10-lt-ldam-drw-sam (rho 0.8),
# seed 0, the 200-epoch schedule, on the JPEG CIFAR-10 copy through the folder path (the CIFAR-10-LT profile,
# imbalance factor 100), bf16 autocast + channels-last (compiled: auto is on for runs this long), the test set
# evaluated every $EVAL_EVERY epochs and every epoch of the last 10 %.
#
# Resumable across interruptions and sessions: run it again and each run continues from its last.pt (--resume, bit
# for bit on one machine); a finished run is skipped. The runs go one after another (LDAM-DRW first), each on all the
# machine's cores. Every invocation appends a line per run to $OUT/cpus.tsv (start, end, run, epochs before -> after,
# CPU model, whether it computes bf16 natively), so the closing figures can say which CPU ran which epochs. The
# precision chosen at the start stays: a continuation on a CPU without native bf16 runs correctly, only slower.
#
# Environment:
#   DATA_ROOT=            the extracted copy (ROOT/train/<class>/*.jpg, ROOT/test/<class>/*.jpg); default: the
#                         tarball DATA_TAR extracted once into $HOME/ltsam-data/cifar10-jpeg
#   DATA_TAR=../shared/data/cifar10-jpeg.tar.gz
#   OUT=$HOME/ltsam-headline   run folders (OUT/<recipe>), logs, cpus.tsv: outside the work tree, so a later
#                         session on the same machine finds them
#   EVAL_EVERY=10         --eval-every of a new run (a resumed run keeps its own unless set)
#   STOP_AFTER=           epochs per run in this invocation (default: to the end)
#   RECIPES="cifar10-lt-ldam-drw cifar10-lt-ldam-drw-sam"
#   PYTHON=.venv/bin/python
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$(pwd -P)/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-$HOME/ltsam-headline}"
EVAL_EVERY="${EVAL_EVERY:-10}"
STOP_AFTER="${STOP_AFTER:-}"
RECIPES="${RECIPES:-cifar10-lt-ldam-drw cifar10-lt-ldam-drw-sam}"
say() { echo "[headline_pair $(date -u +%FT%TZ)] $*" | tee -a "$OUT/headline_pair.log"; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)

if [[ -z "${DATA_ROOT:-}" ]]; then
    DATA_ROOT="$HOME/ltsam-data/cifar10-jpeg"
    if [[ ! -d "$DATA_ROOT/train" ]]; then
        tar_file="${DATA_TAR:-../shared/data/cifar10-jpeg.tar.gz}"
        [[ -f "$tar_file" ]] || { say "no data: set DATA_ROOT or DATA_TAR (cifar10-jpeg.tar.gz)"; exit 2; }
        mkdir -p "$DATA_ROOT" && tar -xzf "$tar_file" -C "$DATA_ROOT" || { say "extraction failed"; exit 1; }
    fi
fi
[[ -d "$DATA_ROOT/train" && -d "$DATA_ROOT/test" ]] || { say "no train/ and test/ under $DATA_ROOT"; exit 2; }

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
native=$(grep -qw avx512_bf16 /proc/cpuinfo && echo "bf16 native" || echo "bf16 emulated")
[[ -f "$OUT/cpus.tsv" ]] || printf 'start\tend\trun\tepochs\tcpu\tbf16\n' > "$OUT/cpus.tsv"
done_epochs() { if [[ -f "$1/metrics.jsonl" ]]; then grep -c . "$1/metrics.jsonl"; else echo 0; fi; }
finished() {  # final.json records every epoch done (a --stop-after run writes one too)
    "$PY" -c "import json, sys
try: f = json.load(open(sys.argv[1] + '/final.json'))
except (OSError, ValueError): sys.exit(1)
sys.exit(0 if f.get('epochs_done', 0) >= f.get('epochs', 1) else 1)" "$1"; }

status=0
for recipe in $RECIPES; do
    run="$OUT/$recipe"
    if finished "$run"; then
        say "$recipe: finished ($(done_epochs "$run") epochs)"
        continue
    fi
    before=$(done_epochs "$run")
    start=$(date -u +%FT%TZ)
    stop=(); [[ -n "$STOP_AFTER" ]] && stop=(--stop-after "$STOP_AFTER")
    if [[ -f "$run/config.json" ]]; then
        say "$recipe: resuming after epoch $before on $cpu ($native)"
        "$PY" -m ltsam train --resume "$run" "${stop[@]}" --no-progress >> "$run.log" 2>&1
    else
        say "$recipe: starting on $cpu ($native)"
        "$PY" -m ltsam train --recipe "$recipe" --dataset folder --data-root "$DATA_ROOT" --amp bf16 --channels-last \
            --eval-every "$EVAL_EVERY" "${stop[@]}" --out "$run" --no-progress >> "$run.log" 2>&1
    fi
    rc=$?
    printf '%s\t%s\t%s\t%s -> %s\t%s\t%s\n' "$start" "$(date -u +%FT%TZ)" "$recipe" "$before" "$(done_epochs "$run")" \
        "$cpu" "$native" >> "$OUT/cpus.tsv"
    if (( rc != 0 )); then
        say "$recipe: stopped (exit $rc): $(grep -m1 'ltsam: ' <(tac "$run.log") || tail -1 "$run.log")"
        status=$rc
        break  # a stop by a signal ends the invocation; run again to continue
    fi
    say "$recipe: $(done_epochs "$run") epochs done"
done
exit $status
