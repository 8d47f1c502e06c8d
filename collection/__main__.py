"""`python -m collection <command>`: one subcommand per module, each with add_arguments(parser) and run(args)."""

from __future__ import annotations

import argparse
import sys

from collection import download

COMMANDS = {"download": download}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collection", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.__doc__.split("\n")[0], description=module.__doc__)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
