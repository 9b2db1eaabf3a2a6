#!/usr/bin/env bash
# Set up and run every test: lint, types, unit and integration (real processes, real sockets).
# Services the suite needs are started here and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export TIDEWATER_REQUIRE_SERVICES=1  # a test that cannot get its service fails instead of skipping

.venv/bin/ruff check src tests bench
.venv/bin/mypy

# Real Slurm (+ munge) and MPICH for the tests marked slurm/mpi; stopped however we exit.
trap 'scripts/services.sh stop || echo "scripts/services.sh stop failed" >&2' EXIT
scripts/services.sh start

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "no tests were collected: treating as a failure" >&2
    exit 1
fi
exit "$status"
