#!/usr/bin/env bash
# Builds (or reuses) a virtual environment with the test extras, then runs the test suite from the
# repo root. Extra arguments go to pytest: ./run-tests.sh -m "not slow" (the quick developer run),
# ./run-tests.sh tests/test_model_parity.py -x
set -euo pipefail
cd "$(dirname "$0")"
VENV_EXTRAS=test source scripts/venv.sh
exec "$VENV/bin/python" -m pytest "$@"
