"""`python -m collection <command> ...`: one subcommand per module, each with `add_arguments` and `run`."""

from __future__ import annotations

import argparse
import logging

from collection import build, download, milvus_load, sidecar

logger = logging.getLogger(__name__)

COMMANDS = {
    "build": build,
    "sidecar": sidecar,
    "download": download,
    "milvus-load": milvus_load,
}


def parser() -> argparse.ArgumentParser:
    """The command line's parser: `parse_args(argv).command` names the subcommand (deployment files are
    checked against it in the tests)."""
    found = argparse.ArgumentParser(prog="python -m collection", description=__doc__.split("\n")[0])
    commands = found.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=module.__doc__.split("\n")[0], description=module.__doc__))
    return found


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
