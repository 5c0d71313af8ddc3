"""Small real datasets shipped with pysave (no download). See README.md beside this file."""
from __future__ import annotations

from importlib import resources


def pbmc_3tech():
    """1,200 PBMCs x 1,767 genes, raw counts; obs: batch (3 10x chemistries), cell_type (9)."""
    import anndata as ad

    with resources.as_file(resources.files(__name__) / "pbmc_3tech_1200.h5ad") as path:
        return ad.read_h5ad(path)
