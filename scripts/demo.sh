#!/usr/bin/env bash
# Set up and run the demo: embedded controller, a local site whose agent starts two pilots, a real workflow.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tidewater demo "$@"
