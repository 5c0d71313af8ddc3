"""Shared fixtures: small real data (the bundled PBMC set) and one tiny trained model."""
from __future__ import annotations

import numpy as np
import pytest

import pysave
from pysave import datasets
from support import TINY, TINY_TRAIN


@pytest.fixture(scope="session")
def pbmc_full():
    return datasets.pbmc_3tech()


@pytest.fixture()
def pbmc_small(pbmc_full):
    """400 cells x 300 genes of real PBMC counts, batch x cell type, freshly copied per test."""
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(pbmc_full.n_obs, 400, replace=False))
    genes = np.argsort(-np.asarray(pbmc_full.X.sum(0)).ravel())[:300]
    return pbmc_full[cells][:, np.sort(genes)].copy()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, pbmc_full):
    """A tiny model trained on 400 PBMCs (batch x cell type), saved to a model directory."""
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(pbmc_full.n_obs, 400, replace=False))
    genes = np.sort(np.argsort(-np.asarray(pbmc_full.X.sum(0)).ravel())[:300])
    adata = pbmc_full[cells][:, genes].copy()
    pysave.SAVE.setup_anndata(adata, condition_keys=["batch", "cell_type"], batch_key="batch")
    model = pysave.SAVE(adata, verbose=False, **TINY)
    model.train(**TINY_TRAIN)
    path = tmp_path_factory.mktemp("models") / "tiny"
    model.save(str(path))
    data_path = tmp_path_factory.mktemp("data") / "pbmc_small.h5ad"
    adata.write_h5ad(data_path)
    return {"model": model, "adata": adata, "dir": str(path), "data": str(data_path)}
