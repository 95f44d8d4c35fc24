"""``ltsam report RUN_OR_SWEEP ...``: mean ± std over seeds of run or sweep folders (see ``ltsam.summary``)."""

from __future__ import annotations

import argparse
from typing import Any

from ltsam.summary import REPORT_MARKER, build_report
from ltsam.summary import __doc__ as summary_doc


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="mean ± std over seeds of run or sweep folders (Markdown, CSV, figures)",
                       description=summary_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP", help="run folders, sweep folders or folders of runs")
    p.add_argument("--out", help="where report.md, report.csv and the figures go (default: FIRST_PATH/report); "
                                 f"a folder of an earlier report ({REPORT_MARKER}) or a new or empty one")
    p.add_argument("--partial", action="store_true",
                   help="include unfinished runs, marked (their last finished epoch stands for 'last')")
    p.add_argument("--no-figures", action="store_true", help="only the table and the CSV")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    text, out = build_report(args.paths, args.out, args.partial, not args.no_figures)
    print(text)
    print(f"\nwritten: {out / 'report.md'}, {out / 'report.csv'}"
          + ("" if args.no_figures else f", {out / 'per_class_vs_size.png'}, {out / 'shot_curves.png'}"))
    return 0
