#!/usr/bin/env bash
# Installs what the JavaScript and browser tests need (tests/export/): Debian Chromium for the headless end-to-end
# test, and export/'s npm packages (onnxruntime-web, onnxruntime-node, playwright-core) from package-lock.json.
# Idempotent; never downloads browsers through Playwright (`npx playwright install` is not used).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo)  # a non-root user needs sudo for apt-get
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
    else
        echo "install-js: no apt-get; install ${missing[*]} (Chromium at /usr/bin/chromium, or set CHROMIUM=path)" >&2
    fi
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install-js: node and npm are required (Node >= 18; playwright-core declares >= 20)" >&2
    exit 1
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "install-js: note: Node $(node --version); playwright-core declares Node >= 20 (the browser test may fail)" >&2
fi

# onnxruntime-node's install script would fetch CUDA binaries from NuGet; the CPU build is in the npm package.
export ONNXRUNTIME_NODE_INSTALL=skip
(cd export && npm ci --no-audit --no-fund)
