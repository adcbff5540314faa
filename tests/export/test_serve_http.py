"""`segany serve --http-port`: the demo page and its data beside gRPC, from the real command, with the shipped model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from segany.models import VARIANTS


@pytest.mark.slow
def test_serve_with_http_port_serves_demo_and_stops_on_sigterm():
    if not VARIANTS["segany-lite"].shipped.is_file():
        pytest.skip("shipped weights missing")
    cmd = [sys.executable, "-m", "segany", "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        deadline = time.monotonic() + 120
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"segany demo on (http://127\.0\.0\.1:\d+/)", line)
            if match:
                url = match.group(1)
        assert url, "no demo line in output:\n" + "".join(lines)
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<html" in page.lower()
        for _ in range(100):  # the engine warms up before /healthz says ok
            try:
                if urllib.request.urlopen(url + "healthz", timeout=5).read().strip() == b"ok":
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("/healthz never became ok")
        response = urllib.request.urlopen(url + "sample.png", timeout=30)
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "segany stopped" in out
