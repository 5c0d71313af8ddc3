"""Write a large SYNTHETIC .h5ad for throughput and memory benchmarks only (never for quality).

    .venv/bin/python benchmarks/make_synthetic_atlas.py --n-cells 1000000 --out /tmp/synthetic_1M.h5ad

Cells are real cells of scVelo pancreas E15.5 (../shared/data, 3,696 cells x 2,000 genes, raw
counts) drawn with replacement (seeded); obs keeps their `clusters` and adds a synthetic
`batch` (4 levels, at random). X is CSR float32, uncompressed, written chunk by chunk with
h5py so that memory stays flat. `uns["synthetic"]` says all this inside the file.
"""
from __future__ import annotations

import argparse
import os

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "..", "shared", "data", "scvelo_pancreas_e15_supercell_3696.h5ad")
CHUNK = 50_000


def main() -> None:
    import anndata as ad
    from anndata.io import write_elem

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cells", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    real = ad.read_h5ad(SOURCE)
    X = sp.csr_matrix(real.X, dtype=np.float32)
    rng = np.random.default_rng(args.seed)
    rows = rng.integers(0, real.n_obs, size=args.n_cells)
    nnz_per_row = np.diff(X.indptr)[rows]
    indptr = np.concatenate([[0], np.cumsum(nnz_per_row)]).astype(np.int64)
    tmp = args.out + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (args.n_cells, real.n_vars)})
        data = g.create_dataset("data", shape=(int(indptr[-1]),), dtype="float32", chunks=(1 << 20,))
        indices = g.create_dataset("indices", shape=(int(indptr[-1]),), dtype="int32", chunks=(1 << 20,))
        g.create_dataset("indptr", data=indptr)
        for start in range(0, args.n_cells, CHUNK):
            block = X[rows[start:start + CHUNK]]
            a, b = int(indptr[start]), int(indptr[min(start + CHUNK, args.n_cells)])
            data[a:b] = block.data
            indices[a:b] = block.indices
            print(f"wrote {min(start + CHUNK, args.n_cells)}/{args.n_cells} cells", flush=True)
        obs = pd.DataFrame({
            "clusters": pd.Categorical(real.obs["clusters"].to_numpy()[rows]),
            "batch": pd.Categorical(np.array(["b0", "b1", "b2", "b3"])[rng.integers(0, 4, size=args.n_cells)]),
            "source_cell": pd.Categorical(real.obs_names.to_numpy()[rows]),
        }, index=pd.Index([f"synthetic_{i}" for i in range(args.n_cells)]))
        write_elem(f, "obs", obs)
        write_elem(f, "var", real.var[[]])
        write_elem(f, "uns", {"synthetic": "SYNTHETIC: real scVelo pancreas cells resampled with replacement "
                                           f"(seed {args.seed}); for throughput and memory benchmarks only"})
        for key in ("obsm", "varm", "layers", "obsp", "varp"):
            write_elem(f, key, {})
    os.replace(tmp, args.out)
    print(f"{args.out}: {args.n_cells} cells x {real.n_vars} genes, {indptr[-1]:,} non-zeros, "
          f"{os.path.getsize(args.out) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
