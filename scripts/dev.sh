#!/usr/bin/env bash
# Bootstrap .venv from the python3 on PATH, then run vigil or its tests in it.
#   scripts/dev.sh run [args]   start the whole stack (vigil up)
#   scripts/dev.sh test [args]  run the test suite
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.vigil-installed"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "vigil needs Python 3.11 or newer as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml changed since the last successful install.
want="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "installing vigil and its dependencies into $VENV" >&2
  # --no-compile: bytecode is written on first import instead, a third of the install time.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -e ".[dev,embedded]"
  echo "$want" >"$STAMP"
fi

command="${1:-}"
shift || true
case "$command" in
  run)
    if "$VENV/bin/vigil" up --help >/dev/null 2>&1; then
      exec "$VENV/bin/vigil" up "$@"
    fi
    exec "$VENV/bin/python" -m stack.runner "$@"
    ;;
  test)
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  *)
    echo "usage: $0 run|test [args]" >&2
    exit 2
    ;;
esac
