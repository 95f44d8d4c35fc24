#!/usr/bin/env bash
# Record what a fixed set of small runs writes, single-threaded, so a refactoring can be checked bit for
# bit with scripts/compare_behaviour.py BEFORE AFTER.
#   usage: PYTHONPATH=src bash scripts/record_behaviour.sh OUT
set -euo pipefail
OUT=${1:?usage: record_behaviour.sh OUT}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
rm -rf "$OUT" && mkdir -p "$OUT"
ltsam() { "$PY" -m ltsam "$@"; }

# a small long-tailed image folder: 10 classes, 40 ... 5 training images, 5 test images per class, 32x32
"$PY" - "$OUT/imgs" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
counts = [round(40 * (5 / 40) ** (c / 9)) for c in range(10)]
for split, per_class in (("train", counts), ("test", [5] * 10)):
    for c, n in enumerate(per_class):
        d = root / split / f"class{c}"
        d.mkdir(parents=True)
        base = rng.integers(0, 256, size=3)
        for i in range(n):
            img = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
PY

FOLDER=(--dataset folder --data-root "$OUT/imgs" --imb-type none -b 32 --threads 1 --no-compile --device cpu --no-progress)
ltsam train --out "$OUT/digits" --threads 1 --device cpu --no-progress
ltsam train --out "$OUT/ce_sgd" "${FOLDER[@]}" --arch resnet20 --epochs 3 --loss ce --train-rule none --optimizer sgd \
  --val-per-class 1  # the best_val checkpoint and record too
ltsam train --out "$OUT/ldam_drw_sam" "${FOLDER[@]}" --arch resnet20 --epochs 3 --loss ldam --train-rule drw \
  --optimizer sam --drw-epoch 2
ltsam train --out "$OUT/glmc_sam" "${FOLDER[@]}" --method glmc --arch resnet20 --epochs 2 --optimizer sam
ltsam finetune "$OUT/digits" --stage crt --epochs 2 --out "$OUT/crt" --device cpu --no-progress
ltsam finetune "$OUT/ce_sgd" --stage tau-norm --out "$OUT/tau" --device cpu --no-progress  # a linear head; tau on val
# stopped and resumed: the checkpoint restore and the metrics.jsonl truncation
ltsam train --out "$OUT/resumed" "${FOLDER[@]}" --arch resnet20 --epochs 3 --optimizer sam --stop-after 1
ltsam train --resume "$OUT/resumed" --no-progress
ltsam finetune "$OUT/digits" --stage crt --epochs 2 --out "$OUT/crt_resumed" --device cpu --no-progress --stop-after 1
ltsam finetune --resume "$OUT/crt_resumed" --no-progress
ltsam hessian "$OUT/digits" --classes 0,9 --power-iters 5 --trace-iters 5 --slq-steps 10 --device cpu \
  --out "$OUT/hessian" --no-progress
echo "recorded into $OUT"
