"""How much does scIB scoring move when its input moves by rounding? (not a test)

    .venv/bin/python benchmarks/try_scoring_noise.py DATASET [SEED]   # -> results/scoring_noise/

The batch task's unintegrated PCA (the harness's "pca" row), scored as the harness scores it,
and the same embedding after changes that no method should be judged on: the PCA of the
log-normalized values rounded to float32, and the embedding plus Gaussian noise of 1e-6 and
1e-4 of its spread (5 draws each); and the unchanged embedding scored under 4 other scoring
seeds, which draw kBET's ARPACK start vector (protocol version 4). The spread of scIB Total
over these is the resolution of the comparisons in benchmarks/README.md ("Scoring resolution").
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_benchmarks import DATASETS, RESULTS, load  # noqa: E402


def main() -> None:
    import anndata as ad

    from pysave import metrics as M
    from pysave.io import atomic_output

    dataset, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    spec = DATASETS[dataset]
    adata = load(dataset)
    logs = M.log_normalized(adata)  # float64
    adata.obsm["X_pca"] = M.unintegrated_pca(adata, seed=seed)
    adata.obsm["pca_float32_input"] = M.unintegrated_pca(ad.AnnData(logs.astype(np.float32)), seed=seed)
    rng = np.random.default_rng(seed)
    spread = float(adata.obsm["X_pca"].std())
    keys = ["X_pca", "pca_float32_input"]
    for scale in (1e-6, 1e-4):
        for draw in range(5):
            key = f"noise_{scale:g}_{draw}"
            adata.obsm[key] = adata.obsm["X_pca"] + rng.normal(0, scale * spread, adata.obsm["X_pca"].shape).astype(np.float32)
            keys.append(key)
    table = M.batch_correction(adata, spec["batch_key"], spec["label_key"], keys, pre_integrated_key="X_pca", seed=seed)["table"]
    print(table.round(4).T.to_string(), flush=True)
    # The same embedding under other scoring seeds: what kBET's start vector alone moves.
    by_seed = {s: M.batch_correction(adata, spec["batch_key"], spec["label_key"], ["X_pca"], pre_integrated_key="X_pca",
                                     seed=s)["table"].loc["X_pca"].to_dict() for s in range(seed + 1, seed + 5)}
    for s, row in by_seed.items():
        print(f"scoring seed {s}: Total {row['Total']:.4f}, kBET {row['kbet_per_label']:.4f}", flush=True)
    os.makedirs(os.path.join(RESULTS, "scoring_noise"), exist_ok=True)
    out = os.path.join(RESULTS, "scoring_noise", f"{dataset}_s{seed}.json")
    with atomic_output(out) as tmp, open(tmp, "w") as fh:
        json.dump({"dataset": dataset, "seed": seed, "embedding_spread": spread,
                   "protocol_version": M.PROTOCOL_VERSION, "table": {k: table.loc[k].to_dict() for k in keys},
                   "X_pca_by_scoring_seed": {str(s): row for s, row in by_seed.items()}}, fh, indent=1)


if __name__ == "__main__":
    main()
