#!/usr/bin/env bash
# Builds (or reuses) a virtual environment with the test extras, then runs the whole test suite.
# Extra arguments go to pytest, e.g. ./run-tests.sh tests/test_model_parity.py -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh test
exec "$VENV/bin/python" -m pytest "$@"
