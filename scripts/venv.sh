# Sourced by run-*.sh: create $VENV (default .venv) if needed, upgrade pip first (the pip that a
# new venv ships can backtrack for many minutes on the JAX stack), install the project with the
# extras named in $VENV_EXTRAS (e.g. "test", "cuda"), never in $1: a sourced file sees its
# caller's arguments, which belong to the tool being run. Re-running only checks what is installed.
VENV=${XLING_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
extras=${VENV_EXTRAS:-}
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
