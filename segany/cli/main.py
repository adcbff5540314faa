"""Entry point of the ``segany`` command.

Each subcommand lives in its own module under ``segany.cli`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (a callable taking the parsed namespace and returning an exit code). Modules are imported
only when listed here, and heavy imports (torch, grpc) happen inside ``func``, so ``segany --help`` is fast.
``train``, ``tune-iou-head`` and ``evaluate`` hand all their arguments to a training module's own ``main`` (see
``PASSTHROUGH``).

Exit codes: 0 success, 1 partial failure (some inputs skipped, reported), 2 bad usage or bad input,
3 a required resource is unavailable (model file, server), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from segany.errors import (
    CheckpointError,
    DownloadError,
    InvalidInputError,
    SeganyError,
    UnauthenticatedError,
    UnavailableError,
    UnknownModelError,
)

#: Subcommand modules, in the order ``--help`` lists them. A missing module is skipped (optional parts).
COMMANDS = ("serve", "annotate", "embed", "export", "models", "bench")

#: Subcommands whose arguments all belong to another module's ``main(argv)`` (its own --help included), listed
#: after COMMANDS in ``--help``: name -> (module, one-line help).
PASSTHROUGH = {
    "train": ("segany.training.train", "train the small shipped model on synthetic scenes"),
    "tune-iou-head": ("segany.training.tune_iou_head", "retrain a trained model's IoU head on its own masks"),
    "evaluate": ("segany.training.evaluate", "held-out mIoU and IoU calibration of a model"),
}

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    from segany import __version__

    parser = argparse.ArgumentParser(prog="segany", description="Promptable segmentation (Segment Anything style).")
    parser.add_argument("--version", action="version", version=f"segany {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"segany.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"segany.cli.{name}":
                continue
            raise
        module.register(sub)
    for name, (_, text) in PASSTHROUGH.items():  # listed for --help only: main() hands their arguments over
        sub.add_parser(name, help=f"{text} (see `segany {name} --help`)")
    return parser


def exit_code_for(exc: BaseException) -> int:
    """The CLI's exit code for an error (see module docstring)."""
    if isinstance(exc, (InvalidInputError, UnknownModelError, CheckpointError, UnauthenticatedError)):
        return EXIT_USAGE  # a missing or wrong --token is the caller's to fix, like a bad option
    if isinstance(exc, (UnavailableError, DownloadError)):
        return EXIT_UNAVAILABLE
    return EXIT_PARTIAL


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return int(importlib.import_module(PASSTHROUGH[argv[0]][0]).main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("segany: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SeganyError as exc:
        print(f"segany {args.command}: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
