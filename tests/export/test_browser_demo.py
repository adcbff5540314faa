"""The demo page end to end in headless Chromium: load, click, shift-click, box; the mask the page draws (decoded
in the browser by onnxruntime-web from the fp16 embedding) matches the server's mask for the same prompt.

Drives Debian's /usr/bin/chromium with playwright-core (export/test/browser_e2e.mjs) on a closed network: every
request that is not to the demo server is aborted and reported. Screenshots land in ``artifacts/browser/``
(git-ignored; the path is printed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.export.conftest import EXPORT, REPO, node_ready

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
MIN_IOU = 0.99


def test_demo_page_draws_the_servers_mask(demo):
    reason = node_ready()
    if reason is None and not (EXPORT / "node_modules" / "playwright-core").is_dir():
        reason = "playwright-core is missing from export/node_modules: run `npm ci` in export/"
    if reason is None and not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        reason = f"Chromium is not at {CHROMIUM} (Debian: apt-get install -y chromium; CI: .ci/install-js.sh)"
    if reason is not None:
        pytest.skip(reason)
    out = REPO / "artifacts" / "browser"
    proc = subprocess.run(
        [
            "node",
            str(EXPORT / "test" / "browser_e2e.mjs"),
            "--url",
            demo.url,
            "--out",
            str(out),
            "--chromium",
            CHROMIUM,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1])
    print(f"screenshots in {out}")
    assert result["ok"], result.get("error")
    assert result["errors"] == [], result["errors"]  # no page errors, no failed or off-origin requests
    assert result["isolated"], "the page is not cross-origin isolated (COOP/COEP headers)"
    assert [s["name"] for s in result["steps"]] == ["click", "negative-click", "box"]
    for step in result["steps"]:
        assert step["iou"] >= MIN_IOU, step
        assert step["drawnArea"] > 0, step
        assert step["picked"] == step["serverBest"], step
        assert Path(step["screenshot"]).is_file()
    assert result["steps"][1]["prompt"]["labels"] == [1, 0]
    assert result["steps"][2]["prompt"]["box"] is not None and result["steps"][2]["prompt"]["points"] == []
