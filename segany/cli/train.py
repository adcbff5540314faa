"""``segany train ...``: train the shipped model on procedural scenes (arguments of ``segany.training.train``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # Listed for --help only: main() hands every argument after "train" to segany.training.train.main.
    sub.add_parser("train", help="train the small shipped model on synthetic scenes (see `segany train --help`)")
