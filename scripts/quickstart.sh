#!/usr/bin/env bash
# Set up .venv, then run the example batch (prompts.json) on this machine with the tiny
# random model: PNGs and manifest.json land in outputs/<run id>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh local
export HF_HUB_OFFLINE=1
exec .venv/bin/imggenhub generate --backend local --model tiny-random "$@"
