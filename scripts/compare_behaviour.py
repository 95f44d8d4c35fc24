"""Compare two folders written by ``scripts/record_behaviour.sh``: bit for bit, apart from timings.

    python scripts/compare_behaviour.py BEFORE AFTER

Checks every run folder's metrics.jsonl (timing keys left out), final.json (timings and paths left out),
the model and optimizer state of last.pt / best.pt / best_val.pt (``torch.equal``), a stage's sweep.json,
and the Hessian summary.json; prints ALL IDENTICAL, or each difference and exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

TIMING = {"seconds", "elapsed", "train_seconds"}
PATHS = {"path", "run", "out", "data_root", "sha256"}  # under BEFORE or AFTER (the parent's SHA-256 with them)
CHECKPOINTS = ("last.pt", "best.pt", "best_val.pt")


def scrub(value: Any) -> Any:
    """The value without timing keys or the folder-dependent paths."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in TIMING | PATHS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def tensors_equal(a: Any, b: Any, where: str, out: list[str]) -> None:
    """Every tensor and value of two state dicts equal (``torch.equal``: same dtype, shape and bits)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype \
                or a.shape != b.shape or not torch.equal(a, b):
            out.append(f"{where}: tensors differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            out.append(f"{where}: keys differ ({sorted(map(str, set(a) ^ set(b)))})")
        for k in a.keys() & b.keys() - TIMING - PATHS:
            tensors_equal(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: lengths differ")
        for i, (x, y) in enumerate(zip(a, b)):
            tensors_equal(x, y, f"{where}[{i}]", out)
    elif scrub(a) != scrub(b):
        out.append(f"{where}: {a!r} != {b!r}"[:300])


def compare_json(a: Path, b: Path, out: list[str]) -> None:
    if a.exists() != b.exists():
        out.append(f"{a.name}: present in only one of the two ({a if a.exists() else b})")
    elif a.exists():
        load = (lambda p: [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]) \
            if a.suffix == ".jsonl" else (lambda p: json.loads(p.read_text()))
        x, y = scrub(load(a)), scrub(load(b))
        if x != y:
            out.append(f"{b}: differs from {a}")


def compare_run(a: Path, b: Path, out: list[str]) -> None:
    for name in ("metrics.jsonl", "final.json", "sweep.json", "summary.json"):
        compare_json(a / name, b / name, out)
    for name in CHECKPOINTS:
        pa, pb = a / name, b / name
        if pa.exists() != pb.exists():
            out.append(f"{pb}: present in only one of the two")
        elif pa.exists():
            ca, cb = (torch.load(p, map_location="cpu", weights_only=False) for p in (pa, pb))
            if set(ca) != set(cb):
                out.append(f"{pb}: payload keys differ ({sorted(set(ca) ^ set(cb))})")
            for key in sorted(ca.keys() & cb.keys() - TIMING - PATHS):
                tensors_equal(ca[key], cb[key], f"{pb}:{key}", out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    before, after = map(Path, argv)
    runs = sorted(p.name for p in before.iterdir() if p.is_dir() and p.name != "imgs")
    out: list[str] = []
    if runs != sorted(p.name for p in after.iterdir() if p.is_dir() and p.name != "imgs"):
        out.append("the two folders hold other runs")
    for name in runs:
        if (after / name).is_dir():
            n = len(out)
            compare_run(before / name, after / name, out)
            print(f"{name}: {'identical' if len(out) == n else 'DIFFERENT'}")
    if out:
        print("\n".join(out))
        return 1
    print("ALL IDENTICAL")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
