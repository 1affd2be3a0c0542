#!/usr/bin/env bash
# The README's test command: set up (Debian packages, .venv), lint, then every test. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
exec .venv/bin/python -m pytest tests "$@"
