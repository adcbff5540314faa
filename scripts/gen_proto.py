"""Regenerate the Python gRPC code from proto/segany/v1/segany.proto into segany/service/proto/.

Usage: ``python scripts/gen_proto.py [--out DIR]``. The generated modules are committed; a test regenerates
them into a temp dir and fails when the committed copies are stale. protoc writes absolute imports
(``from segany.v1 import segany_pb2``); they are rewritten to package-relative ones so the modules work wherever
the package is installed, and the messages' module name becomes ``segany.service.proto.segany_pb2``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTO = PROTO_ROOT / "segany" / "v1" / "segany.proto"
DEFAULT_OUT = ROOT / "segany" / "service" / "proto"
GENERATED = ("segany_pb2.py", "segany_pb2.pyi", "segany_pb2_grpc.py")
_ABS_IMPORT = re.compile(r"^from segany\.v1 import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc and write the fixed modules into ``out_dir``; returns their paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO}")
        written = []
        for name in GENERATED:
            text = (Path(tmp) / "segany" / "v1" / name).read_text()
            text = _ABS_IMPORT.sub(r"from . import \1 as \2", text)
            # The message classes' __module__ names where they really live, so pickle (Ray Serve ships requests
            # between processes that way) finds them by import.
            if name == "segany_pb2.py":
                if "'segany.v1.segany_pb2'" not in text:
                    raise SystemExit("protoc's module name for the messages was not found; update gen_proto.py")
                text = text.replace("'segany.v1.segany_pb2'", "'segany.service.proto.segany_pb2'")
            if name.endswith(".pyi"):  # the lint config excludes the generated .py files, not their stubs
                text = "# ruff: noqa\n" + text
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
