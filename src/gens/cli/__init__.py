"""The ``gens`` command line.

Each subcommand lives in its own module ``gens.cli.<name>`` that defines

    HELP: str                                 # one line for ``gens --help``
    def add_arguments(parser) -> None         # argparse options
    def run(args) -> int | None               # the work; heavy imports go inside

so ``gens --help`` imports neither torch nor lightning.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# order shown in --help
COMMANDS = (
    "bandwidth",
    "train",
    "sample",
    "reconstruct",
    "interpolate",
    "novelty",
    "evaluate",
    "reproduce",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gens",
        description=(
            "Generative Encoding Networks: autoencoders whose latent distribution is matched to an "
            "analytic target by a kernel-density estimate of the Jensen-Shannon divergence."
        ),
    )
    from gens import __version__

    parser.add_argument("--version", action="version", version=f"gens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gens.cli.{name}")
        p = sub.add_parser(
            name.replace("_", "-"),
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        code = args._module.run(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"gens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gens {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
