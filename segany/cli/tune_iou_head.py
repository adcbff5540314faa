"""``segany tune-iou-head ...``: retrain a model's IoU head alone (arguments of ``segany.training.tune_iou_head``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # Listed for --help only: main() hands every argument after "tune-iou-head" to segany.training.tune_iou_head.main.
    sub.add_parser(
        "tune-iou-head",
        help="retrain a trained model's IoU head on its own masks (see `segany tune-iou-head --help`)",
    )
