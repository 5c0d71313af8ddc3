#!/usr/bin/env bash
# Install R and the R packages saveR needs, from Debian 12's archive (CRAN is not used).
# Idempotent: does nothing when every package is already installed. Needs root (or sudo) otherwise.
set -euo pipefail
PKGS="r-base-core r-cran-reticulate r-bioc-singlecellexperiment r-cran-seurat r-cran-seuratobject r-cran-testthat
      r-cran-hdf5r r-bioc-rhdf5 r-cran-matrix r-cran-jsonlite r-cran-devtools r-cran-roxygen2"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "R packages: all installed ($(R --version | head -1))"
  exit 0
fi
echo "R packages to install:$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: installing R packages needs root; run as root or: apt-get install$missing" >&2; exit 1
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "R packages: installed ($(R --version | head -1))"
