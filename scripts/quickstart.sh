#!/usr/bin/env bash
# Set up .venv, then run the example batch (prompts.json) on this machine with the tiny
# shapes model (trained here, shipped in imggenhub/models/): PNGs and manifest.json land
# in outputs/<run id>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh local
export HF_HUB_OFFLINE=1
exec .venv/bin/imggenhub generate --backend local --model tiny-shapes "$@"
