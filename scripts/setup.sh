#!/usr/bin/env bash
# Set up .venv from nothing: the CPU torch first (a bare "torch" requirement would
# pull a multi-GB CUDA build), then imggenhub with its local engine and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${IMGGENHUB_VENV:-.venv}
extras=${1:-local,test}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# imggenhub's own bytecode, written now (pip does it for the packages it installs; an
# editable install's sources are compiled afresh by every process otherwise, where
# PYTHONDONTWRITEBYTECODE is set): ~60 ms off each CLI start. Only changed files are redone.
"$VENV/bin/python" -m compileall -q imggenhub >/dev/null || true
stamp="$VENV/.imggenhub-setup"
# PIP_CONSTRAINT (pip reads it): the versions a test environment is held to (scripts/oldest.txt)
want="$(cat pyproject.toml scripts/setup.sh ${PIP_CONSTRAINT:-} | sha256sum | cut -c1-16) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  case ",$extras," in
    *,local,*)
      # CPU build: the wheel that lies on this machine's disk, else PyTorch's CPU index.
      { "$VENV/bin/python" -m pip install -q "torch==2.13.0" \
        || "$VENV/bin/python" -m pip install -q --index-url https://download.pytorch.org/whl/cpu torch; } \
        2> >(grep -v "^WARNING: Location" >&2)
      ;;
  esac
fi
"$VENV/bin/python" -m pip install -q -e ".[$extras]" 2> >(grep -v "^WARNING: Location" >&2)
case ",$extras," in
  *,test,*)
    # the gallery's browser test: Debian's chromium (Playwright's own browser download cannot
    # be reached). As root with apt, install it; elsewhere that test says why it cannot run.
    if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will say so" >&2
    fi
    ;;
esac
echo "$want" > "$stamp"
