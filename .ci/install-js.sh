#!/usr/bin/env bash
# Installs what the JavaScript and browser tests need (tests/export/): Debian Chromium for the headless end-to-end
# test, and export/'s npm packages (onnxruntime-web, onnxruntime-node, playwright-core) from package-lock.json.
# Idempotent; never downloads browsers through Playwright (`npx playwright install` is not used).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
    else
        echo "install-js: no apt-get; install Chromium at /usr/bin/chromium (or set CHROMIUM=path)" >&2
    fi
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install-js: node and npm are required (Node >= 18)" >&2
    exit 1
fi

# onnxruntime-node's install script would fetch CUDA binaries from NuGet; the CPU build is in the npm package.
export ONNXRUNTIME_NODE_INSTALL=skip
(cd export && npm ci --no-audit --no-fund)
