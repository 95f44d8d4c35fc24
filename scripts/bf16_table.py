"""Per-epoch test top-1 of the bf16 learning check (scripts/bf16_check.sh), as a Markdown table.

    python scripts/bf16_table.py OUT

For each method (``ce_sgd``, ``ldam_drw_sam``) it reads OUT/<method>_{fp32_s0,fp32_s1,bf16cl_s0}/metrics.jsonl
(one record per epoch: ``test_top1``, ``seconds``) and prints, per epoch, the three runs' test top-1, the
seed-to-seed spread |fp32 s0 - fp32 s1| and the precision difference |bf16+CL s0 - fp32 s0|, marked "yes" when
the difference is within the spread. The last rows give each run's mean seconds per epoch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = ("ce_sgd", "ldam_drw_sam")
RUNS = ("fp32_s0", "fp32_s1", "bf16cl_s0")


def read_metrics(run: Path) -> list[dict]:
    """The run's per-epoch records, or ``[]`` before its first epoch."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(out: Path, method: str) -> list[str]:
    """The Markdown lines of one method's table."""
    records = {r: {rec["epoch"]: rec for rec in read_metrics(out / f"{method}_{r}")} for r in RUNS}
    epochs = sorted(set().union(*(recs.keys() for recs in records.values())))
    lines = [f"### {method}", "",
             "| epoch | fp32 s0 | fp32 s1 | bf16+CL s0 | spread \\|s0−s1\\| | \\|bf16−fp32\\| (s0) | within spread |",
             "|---|---|---|---|---|---|---|"]
    for e in epochs:
        top = {r: records[r].get(e, {}).get("test_top1") for r in RUNS}
        cells = [f"{top[r]:.2f}" if top[r] is not None else "–" for r in RUNS]
        if all(v is not None for v in top.values()):
            spread = abs(top["fp32_s0"] - top["fp32_s1"])
            diff = abs(top["bf16cl_s0"] - top["fp32_s0"])
            cells += [f"{spread:.2f}", f"{diff:.2f}", "yes" if diff <= spread else "no"]
        else:
            cells += ["–", "–", "–"]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    secs = []
    for r in RUNS:
        s = [rec["seconds"] for rec in records[r].values() if "seconds" in rec]
        secs.append(f"{sum(s) / len(s):.0f}" if s else "–")
    lines.append("| s/epoch | " + " | ".join(secs) + " | | | |")
    return lines + [""]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/bf16_table.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for method in METHODS:
        print("\n".join(table(out, method)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
