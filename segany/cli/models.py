"""``segany models``: list the zoo; ``segany models download NAME`` fetches and verifies a checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list model variants, or download one", description=__doc__)
    parser.add_argument("action", nargs="?", choices=["list", "download"], default="list")
    parser.add_argument("name", nargs="?", help="variant to download (vit_b, vit_l, vit_h, vit_t)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segany import zoo
    from segany.errors import InvalidInputError

    if args.action == "download":
        if not args.name:
            raise InvalidInputError("segany models download needs a variant name, e.g. vit_b")
        print(zoo.resolve_checkpoint(args.name))
        return 0
    if args.name:
        raise InvalidInputError(f"segany models list takes no name (got {args.name!r}); to fetch one: "
                                f"segany models download {args.name}")
    rows = zoo.listing()
    print(f"{'name':<12} {'size':>10}  {'local':<5}  description / source")
    for r in rows:
        size = _size(r["size_bytes"])
        print(f"{r['name']:<12} {size:>10}  {'yes' if r['local'] else 'no':<5}  {r['description']}")
        print(f"{'':<12} {'':>10}  {'':<5}  {r['local'] or r['source']}")
    return 0


def _size(size_bytes: int | None) -> str:
    if not size_bytes:
        return "?"
    return f"{size_bytes / 2**30:.2f} GiB" if size_bytes >= 2**30 else f"{size_bytes / 2**20:.1f} MiB"
