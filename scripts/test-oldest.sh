#!/usr/bin/env bash
# The test suite again, on the oldest versions of diffusers, transformers, peft and
# accelerate that pyproject.toml allows (scripts/oldest.txt), in .venv-oldest/ set up from
# nothing as scripts/test.sh sets up .venv/: Kaggle's image may carry old ones.
set -euo pipefail
cd "$(dirname "$0")/.."
# (without the app's Gradio, which needs a newer huggingface_hub: its tests are the app's own)
export IMGGENHUB_VENV=.venv-oldest PIP_CONSTRAINT="$PWD/scripts/oldest.txt" IMGGENHUB_APP_EXTRA=""
exec bash scripts/test.sh "$@"
