#!/usr/bin/env bash
# Set up (if needed) and run every test suite. This is the README's test command.
#   Python: pytest over python/tests and shared-tests.
#   R: R CMD build + R CMD check --no-manual of r-package/ (saveR), then its testthat suite, which
#      prints a plain "N passed, N failed" line. SAVER_FULL_CHECK=1 also runs the tests inside
#      R CMD check (slower: they run twice). SKIP_R=1 runs the Python suite only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
if [ -z "${SKIP_R:-}" ]; then
  bash scripts/setup_r.sh
fi
bash scripts/setup.sh
export PYSAVE_REQUIRE_EVAL=1  # setup.sh installs the eval extra: the scIB tests must run, not skip
if [ -z "${SKIP_R:-}" ]; then
  export PYSAVE_REQUIRE_R=1   # the .rds tests must run, not skip
fi
.venv/bin/python -m pytest -q python/tests shared-tests
[ -n "${SKIP_R:-}" ] && exit 0

export RETICULATE_PYTHON="$ROOT/.venv/bin/python"
export SAVER_SHARED_TESTS="$ROOT/shared-tests"
export _R_CHECK_FORCE_SUGGESTS_=false
BUILD="$ROOT/build/r"
rm -rf "$BUILD" && mkdir -p "$BUILD"
cd "$BUILD"
start=$(date +%s)
R CMD build --no-build-vignettes "$ROOT/r-package" >build.log 2>&1 || { cat build.log; exit 1; }
TARBALL=$(ls saveR_*.tar.gz)
CHECK_ARGS="--no-manual"
[ -z "${SAVER_FULL_CHECK:-}" ] && CHECK_ARGS="$CHECK_ARGS --no-tests"
if ! R CMD check $CHECK_ARGS "$TARBALL" >check.log 2>&1; then
  cat check.log; tail -n 80 saveR.Rcheck/00check.log || true
  [ -f saveR.Rcheck/tests/testthat.Rout.fail ] && tail -n 80 saveR.Rcheck/tests/testthat.Rout.fail
  echo "R CMD check failed"; exit 1
fi
grep -E "^Status:" check.log
if grep -qE "^Status:.*(ERROR|WARNING)" check.log; then cat saveR.Rcheck/00check.log; exit 1; fi
echo "R CMD check: $(( $(date +%s) - start )) s"
# The testthat suite against the package that was just checked (installed in saveR.Rcheck).
cd "$ROOT"
R_LIBS="$BUILD/saveR.Rcheck:${R_LIBS:-}" Rscript r-package/tools/run_tests.R r-package/tests/testthat
