"""``ltsam recipes``: list the named recipes, with the papers' figures beside them."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("recipes", help="list the named recipes")
    p.set_defaults(func=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    from ltsam.recipes import RECIPES, STAGE_RECIPES, describe, describe_stage

    for name in RECIPES:
        print(describe(name))
    print("\nsecond stages and post-hoc adjustment on a finished run of the parent recipe:")
    for name in STAGE_RECIPES:
        print(describe_stage(name))
    return 0
