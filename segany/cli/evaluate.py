"""``segany evaluate ...``: held-out mIoU of a model (arguments of ``segany.training.evaluate``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # Listed for --help only: main() hands every argument after "evaluate" to segany.training.evaluate.main.
    sub.add_parser("evaluate", help="held-out mIoU and IoU calibration of a model (see `segany evaluate --help`)")
