"""Write the shared fixtures and their expectations (run once; the outputs are committed).

Both test suites (pytest here, testthat in r-package/) read these files and compare with the
same JSON expectations, so the Python and R sides cannot drift apart.

    python shared-tests/make_fixtures.py
"""
import json
import os

import numpy as np
import pandas as pd

from pysave import datasets

HERE = os.path.dirname(os.path.abspath(__file__))


def pbmc_tiny():
    full = datasets.pbmc_3tech()
    rng = np.random.default_rng(42)
    cells = np.sort(rng.choice(full.n_obs, 60, replace=False))
    genes = np.sort(np.argsort(-np.asarray(full.X.sum(0)).ravel())[:40])
    tiny = full[cells][:, genes].copy()
    tiny.obs = tiny.obs[["batch", "cell_type"]].copy()
    tiny.obs["batch"] = pd.Categorical(tiny.obs["batch"].astype(str),
                                       categories=["10x_3prime_v1", "10x_3prime_v2", "10x_5prime"])
    tiny.obs["cell_type"] = tiny.obs["cell_type"].astype(str).astype("category")
    tiny.obs["n_counts"] = np.asarray(tiny.X.sum(1)).ravel().astype(np.int64)
    tiny.uns = {}
    return tiny


def expectations(adata):
    X = adata.X.tocsr()
    return {
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "obs_names_first": adata.obs_names[:3].tolist(),
        "obs_names_last": adata.obs_names[-1],
        "var_names": adata.var_names.tolist(),
        "obs_categories": {k: adata.obs[k].cat.categories.tolist() for k in ["batch", "cell_type"]},
        "obs_counts": {k: {str(c): int(n) for c, n in adata.obs[k].value_counts(sort=False).items()} for k in ["batch", "cell_type"]},
        "nnz": int(X.nnz),
        "total": float(X.sum()),
        "column_sums": np.asarray(X.sum(0)).ravel().astype(float).tolist(),
        "row_sums_first5": np.asarray(X.sum(1)).ravel()[:5].astype(float).tolist(),
        "x_dtype_is_integer_valued": bool(np.all(X.data == np.round(X.data))),
    }


if __name__ == "__main__":
    tiny = pbmc_tiny()
    tiny.write_h5ad(os.path.join(HERE, "fixtures", "pbmc_tiny.h5ad"))
    with open(os.path.join(HERE, "expectations", "pbmc_tiny.json"), "w") as fh:
        json.dump(expectations(tiny), fh, indent=1)
    print("wrote fixtures/pbmc_tiny.h5ad and expectations/pbmc_tiny.json")
