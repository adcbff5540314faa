"""The JS decoder's Node tests (export/test/*.test.mjs, node:test + onnxruntime-node) as part of the pytest run.

They export decoders from Python, decode with the JS module and check IoU >= 0.99 against the Python predictor for
clicks, box, box + click, mask input, four aspect ratios, fp32 and fp16 containers (see decoder.test.mjs).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.export.conftest import EXPORT, REPO, node_ready

pytestmark = pytest.mark.slow


def test_node_decoder_suite():
    reason = node_ready()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "SEGANY_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    tests = sorted(str(p) for p in (EXPORT / "test").glob("*.test.mjs"))
    proc = subprocess.run(["node", "--test", *tests], cwd=EXPORT, env=env, capture_output=True, text=True, timeout=900)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("# ")]
    print("\n".join(summary))
    assert proc.returncode == 0, f"node --test failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert any(line.startswith("# pass ") and int(line.split()[-1]) >= 10 for line in summary), summary
