#!/usr/bin/env bash
# Set up (if needed) and run every test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q python/tests shared-tests
