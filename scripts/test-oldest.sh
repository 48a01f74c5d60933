#!/usr/bin/env bash
# The test suite again, on the oldest versions of diffusers, transformers, peft and
# accelerate that pyproject.toml allows (scripts/oldest.txt), in .venv-oldest/ set up from
# nothing as scripts/test.sh sets up .venv/: Kaggle's image may carry old ones.
set -euo pipefail
cd "$(dirname "$0")/.."
export IMGGENHUB_VENV=.venv-oldest PIP_CONSTRAINT="$PWD/scripts/oldest.txt"
exec bash scripts/test.sh "$@"
