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
import warnings

# order shown in --help
COMMANDS = (
    "bandwidth",
    "train",
    "sample",
    "reconstruct",
    "interpolate",
    "novelty",
    "semisupervised",
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
        with warnings.catch_warnings():
            _plain_gens_warnings(args.command)
            code = args._module.run(args)
    except KeyboardInterrupt as err:
        print(f"gens {args.command}: interrupted" + (f"; {_one_line(err)}" if str(err) else ""), file=sys.stderr)
        return 130
    except Exception as err:
        message = _user_error(err, args)
        if message is None:
            raise  # a bug: the traceback is what helps
        print(f"gens {args.command}: error: {message}", file=sys.stderr)  # one clear line, no traceback
        return 2
    return int(code or 0)


def _plain_gens_warnings(command: str) -> None:
    """Show gens' own warning categories (FidelityWarning, BandwidthWarning, ...) as one line
    ``gens COMMAND: warning: ...`` instead of Python's file:line form (which names Lightning's frames)."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("gens."):
            print(f"gens {command}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _user_error(err: Exception, args=None) -> str | None:
    """The one line for an error the user can act on, or None for a bug.

    Bad input (ValueError; a JSON file given on the command line that does not parse is named), a diverged
    training (``gens.training.TrainingDiverged``), running out of memory, and a file that cannot be read or
    written (OSError with a file name)."""
    import json

    if isinstance(err, json.JSONDecodeError) and args is not None:
        path = _json_argument(err, args)
        if path is not None:
            return f"{path}: is not valid JSON ({_one_line(err)})"
    training = sys.modules.get("gens.training")
    if isinstance(err, ValueError) or (training is not None and isinstance(err, training.TrainingDiverged)):
        return _one_line(err)
    text = str(err)
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
            isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())):
        return f"out of memory ({_one_line(err)[:200]}); ask for less (a smaller -n, --limit or --batch-size)"
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or _one_line(err)}"
    return None


def _json_argument(err, args) -> str | None:
    """The command-line file whose text ``err`` (a JSONDecodeError) failed to parse, if one is."""
    from pathlib import Path

    for value in vars(args).values():
        if isinstance(value, str) and value and len(value) < 4096:
            try:
                if Path(value).is_file() and Path(value).read_text(errors="replace") == err.doc:
                    return value
            except OSError:
                continue
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
