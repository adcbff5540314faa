"""``segany embed``: write image embeddings as self-describing containers (for browser and edge decoders).

Locally with a model, or through a running server (``--server``), which then also caches them. Each IMAGE
becomes ``OUT/<name>.emb`` (see docs/service.md for the container layout); one line per image on stdout:
``<image> -> <file> id=<image id> <H>x<W>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="write image embeddings (.emb containers)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, TIFF, BMP)")
    p.add_argument("--out", type=Path, required=True, help="directory for the .emb files (created if missing)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored dtype")
    p.add_argument("--server", help="HOST:PORT of a running segany server (default: run the model here)")
    p.add_argument("--token", help="bearer token for --server (or SEGANY_AUTH_TOKEN)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", help="zoo model name (default: the shipped model)")
    model.add_argument("--checkpoint", help="checkpoint file")
    p.add_argument("--threads", type=int, help="torch threads (local mode)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segany.errors import InvalidInputError

    if args.server and (args.model or args.checkpoint):
        raise InvalidInputError("--server embeds with the server's model; drop --model/--checkpoint")
    if args.threads is not None and args.threads < 1:
        raise InvalidInputError(f"--threads must be >= 1, got {args.threads}")
    stems: dict[str, Path] = {}
    for path in args.images:  # the outputs are OUT/<stem>.emb: two inputs must not write the same one
        if path.stem in stems and stems[path.stem] != path:
            raise InvalidInputError(f"{stems[path.stem]} and {path} would both be written to {path.stem}.emb; "
                                    "embed them into separate --out folders")
        stems[path.stem] = path
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot use --out {args.out} as the output folder: {exc.strerror or exc}") from None
    embed, close = _remote(args) if args.server else _local(args)
    try:
        return _embed_all(args, embed)
    finally:
        close()


def _embed_all(args: argparse.Namespace, embed) -> int:
    from segany.errors import InvalidInputError, SeganyError

    failed = 0
    for path in args.images:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"segany embed: skipping {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            image_id, (height, width), blob = embed(data)
        except InvalidInputError as exc:
            print(f"segany embed: skipping {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        except SeganyError:
            raise
        target = args.out / f"{path.stem}.emb"
        target.write_bytes(blob)
        print(f"{path} -> {target} id={image_id} {height}x{width}", flush=True)
    return 1 if failed else 0


def _remote(args: argparse.Namespace):
    import os

    from segany.client import Client

    client = Client(args.server, token=args.token or os.environ.get("SEGANY_AUTH_TOKEN"))

    def embed(data: bytes):
        img = client.embed(data, return_embedding=True, embedding_dtype=args.dtype)
        return img.id, img.size, img.embedding

    return embed, client.close


def _local(args: argparse.Namespace):
    import asyncio

    import torch

    from segany.cache import MemoryCache
    from segany.engine import Engine
    from segany.models import load_model
    from segany.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor(load_model(args.checkpoint or args.model))
    loop = asyncio.new_event_loop()
    engine = Engine(predictor, MemoryCache(0))  # ids computed exactly as the server computes them

    def embed(data: bytes):
        embedded = loop.run_until_complete(engine.embed_bytes(data))
        return embedded.image_id, embedded.original_size, embedded.embedding.to_bytes(args.dtype)

    def close() -> None:
        loop.run_until_complete(engine.close())
        loop.close()

    return embed, close
