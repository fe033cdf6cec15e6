#!/usr/bin/env bash
# Builds (or reuses) a virtual environment, then runs the main job: python -m bin.analyze.
# With no arguments it analyses the embedded 10-language sample on the toy model (no download);
# arguments go to bin.analyze, e.g. ./run-analyze.sh --checkpoint=... --sae_dir=... --platform=gpu
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
exec "$VENV/bin/python" -m bin.analyze "$@"
