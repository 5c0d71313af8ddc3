"""Shared fixtures: small real data (the bundled PBMC set) and one tiny trained model."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import pysave
from pysave import datasets

# A network small enough to train in seconds on 2 CPU cores; the shapes are the paper's kinds.
TINY = dict(hidden_size=32, condition_dim=32, latent_dim=32, latent_token_size=8, n_encoder_layers=1,
            n_decoder_layers=1, n_heads=2, flow_hidden_size=32, flow_layers=1, flow_token_size=16,
            flow_heads=2, n_blocks=8)
TINY_TRAIN = dict(max_epochs=15, flow_epochs=30, batch_size=128, lr=3e-3, flow_lr=3e-3, progress=False)

SHARED_DATA = Path(os.environ.get("PYSAVE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def shared_file(name: str) -> Path:
    """A dataset from ../shared/data. CI sets PYSAVE_REQUIRE_SHARED=1, so there it must exist."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("PYSAVE_REQUIRE_SHARED"):
            pytest.fail(f"{path} is missing but PYSAVE_REQUIRE_SHARED is set")
        pytest.skip(f"{path} not available (needs ../shared/data beside the checkout)")
    return path


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
