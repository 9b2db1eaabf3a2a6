#!/usr/bin/env bash
# Create .venv and install Tidewater into it: with what the demo needs, or with test tools (which include it) when given "test".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        # Debian's python3 ships venv separately.
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
        "$PY" -m venv .venv
    fi
fi
extra=demo
[ "${1:-}" = "test" ] && extra=test
# The install is editable, so only a change to what is installed (pyproject.toml, this
# script) needs pip again: a second run starts the demo or the tests at once.
stamp=.venv/.tidewater-setup-$extra
sum=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$extra]"
echo "$sum" >"$stamp"
