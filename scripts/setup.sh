#!/usr/bin/env bash
# Create .venv with pysave and its pinned dependencies (torch 2.13.0 CPU first, numpy<2).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first, exactly pinned: a range would pull the newest CUDA build (GBs).
.venv/bin/pip install -q --disable-pip-version-check 'torch==2.13.0' 2>&1 | grep -v "is ignored" || true
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,eval]' 2>&1 | grep -v "is ignored" || true
# eval = scib-metrics (+ jax, CPU) for the batch-correction metrics, tested in CI.
# The R bridge (rpy2 builds against R's headers, so only when R is installed: scripts/setup_r.sh).
if command -v R >/dev/null 2>&1; then
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,r,eval]' 2>&1 | grep -v "is ignored" || true
fi
.venv/bin/python -c "import pysave, torch; print('pysave', pysave.__version__, 'torch', torch.__version__)"
