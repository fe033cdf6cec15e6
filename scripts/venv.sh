# Sourced by run-*.sh: make $VENV (default: the repo's .venv) hold the project with the extras in
# $VENV_EXTRAS (e.g. "test"), never $1 (a sourced file sees its caller's arguments, which belong
# to the tool). A stamp records the pyproject.toml it installed and its extras: when they cover
# the request nothing runs, so a complete venv works offline and starts quietly. Otherwise pip is
# upgraded first (the pip a new venv ships can backtrack for many minutes on the JAX stack) and
# the project installed, its output kept in $VENV/install.log and shown only on failure.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${XLING_VENV:-$REPO/.venv}
_extras=${VENV_EXTRAS:-}
_stamp="$VENV/.xling-install-stamp"
_hash=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
_have=$(cat "$_stamp" 2>/dev/null || true)
_covered=no
if [ "${_have%% *}" = "$_hash" ]; then
  case " ${_have#* } " in *" ${_extras:-runtime} "*|*" test "*) _covered=yes ;; esac
fi
if [ "$_covered" != yes ] || [ ! -x "$VENV/bin/python" ]; then
  echo "setting up $VENV (${_extras:-runtime} dependencies; a few minutes the first time) ..." >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip &&
         "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
           -e "$REPO${_extras:+[$_extras]}"; } >"$VENV/install.log" 2>&1; then
    tail -n 30 "$VENV/install.log" >&2
    echo "error: installing into $VENV failed (full log: $VENV/install.log)" >&2
    exit 2
  fi
  echo "$_hash ${_extras:-runtime}" >"$_stamp"
fi
unset _extras _stamp _hash _have _covered
