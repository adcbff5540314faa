"""The committed generated code matches proto/segany/v1/segany.proto (run scripts/gen_proto.py when it does not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_proto", module)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    gen = _gen_module()
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == set(gen.GENERATED)
    stale = [p.name for p in written if p.read_text() != (gen.DEFAULT_OUT / p.name).read_text()]
    assert not stale, f"generated code is stale: {stale}; run `python scripts/gen_proto.py` and commit"


def test_generated_imports_are_package_relative():
    text = (ROOT / "segany" / "service" / "proto" / "segany_pb2_grpc.py").read_text()
    assert "from . import segany_pb2" in text and "from segany.v1" not in text


def test_every_rpc_documents_its_error_codes():
    proto = (ROOT / "proto" / "segany" / "v1" / "segany.proto").read_text()
    lines = proto.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("rpc "):
            comment = "\n".join(lines[max(0, i - 6) : i])
            assert any(code in comment for code in ("INVALID_ARGUMENT", "UNAVAILABLE", "UNIMPLEMENTED")), line


def test_client_does_not_import_torch():
    import subprocess

    code = "import sys, segany.client; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_messages_pickle_by_their_real_module():
    import pickle

    from segany.service.proto import segany_pb2 as pb

    # Ray Serve pickles requests between processes: the module protoc names must be importable
    assert pb.EmbedRequest.__module__ == "segany.service.proto.segany_pb2"
    message = pb.SegmentRequest(multimask=True, outputs=pb.OutputOptions(rle=True, rle_runs=True))
    assert pickle.loads(pickle.dumps(message)) == message
