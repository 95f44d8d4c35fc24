"""Command line: ``ltsam train | eval | finetune | recipes | hessian | hessian-compare | sweep | report``.

Only dispatching: each command lives in ``ltsam.commands``; plugins named by ``--plugin`` are imported first,
since the parsers' choices and flags come from the registries they add to.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ltsam.argtypes import OneLineParser
from ltsam.errors import UserError, exit_code_of


def build_parser() -> argparse.ArgumentParser:
    """The ``ltsam`` parser with every command's sub-parser (the registries as they are now)."""
    from ltsam.commands import COMMANDS

    parser = OneLineParser(prog="ltsam", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def plugin_modules(argv: Sequence[str]) -> list[str]:
    """The ``--plugin MODULE`` values of a command line, read before parsing it."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from ltsam.extensions import load_plugins

        load_plugins(plugin_modules(argv))
    except UserError as exc:
        print(f"ltsam: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    return exit_code_of(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
