#!/usr/bin/env bash
# Set up and run the demo: embedded controller, an idle local site whose agent starts two pilots,
# frames analysed in their warm workers, then warm round trips (tidewater demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tidewater demo "$@"
