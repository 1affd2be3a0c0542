#!/usr/bin/env bash
# The README's main job: set up, then the whole mission on the local Vast emulator (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
exec .venv/bin/skyward-ray demo "$@"
