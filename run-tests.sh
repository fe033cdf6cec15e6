#!/usr/bin/env bash
# Builds (or reuses) a virtual environment with the test extras, then runs the test suite from the
# repo root. Extra arguments go to pytest: ./run-tests.sh -m "not slow" (the quick developer run),
# ./run-tests.sh tests/parity/test_model_parity.py -x
set -euo pipefail
cd "$(dirname "$0")"
VENV_EXTRAS=test source scripts/venv.sh
# One pytest worker per core, at most 4 (each holds its own JAX and torch): most of the suite's
# time is XLA compiling on one core. "-n 0" among the arguments runs in this process instead.
exec "$VENV/bin/python" -m pytest -n auto --maxprocesses=4 "$@"
