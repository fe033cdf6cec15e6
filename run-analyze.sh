#!/usr/bin/env bash
# Builds (or reuses) a virtual environment, then runs the main job: python -m bin.analyze.
# With no arguments it analyses the embedded 10-language sample on the toy model (no download);
# arguments go to bin.analyze, e.g. ./run-analyze.sh --checkpoint=gemma3-270m --sae_dir=random
# Relative paths in them, and the default output folder, are the caller's.
set -euo pipefail
source "$(dirname "$0")/scripts/venv.sh"
exec "$VENV/bin/python" -m bin.analyze "$@"
