"""Write the inputs of the bad-input matrix (run once; the small files are committed).

Every input derives from ../fixtures/pbmc_tiny.h5ad (60 real PBMCs x 40 genes, raw counts).
cases.json says, for each case, what is run and what must come out; both test suites read it.

    python shared-tests/bad_inputs/make_bad_inputs.py
"""
import os

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
INPUTS = os.path.join(HERE, "inputs")


def base():
    return ad.read_h5ad(os.path.join(HERE, "..", "fixtures", "pbmc_tiny.h5ad"))


def with_X(adata, X):
    out = adata.copy()
    out.X = X
    return out


def edit_data(adata, fn):
    out = adata.copy()
    out.X = out.X.copy().astype(np.float32)
    fn(out.X.data)
    return out


def main():
    os.makedirs(INPUTS, exist_ok=True)
    a = base()
    top = int(np.argmax(np.asarray((a.X > 0).sum(0)).ravel()))
    files = {
        "good.h5ad": a,
        "nan_counts.h5ad": edit_data(a, lambda d: d.__setitem__(3, np.nan)),
        "inf_counts.h5ad": edit_data(a, lambda d: d.__setitem__(3, np.inf)),
        "negative_counts.h5ad": edit_data(a, lambda d: d.__setitem__(3, -2)),
        "non_integer_counts.h5ad": edit_data(a, lambda d: d.__setitem__(slice(0, 50), d[:50] + 0.5)),
        "lognorm_as_counts.h5ad": edit_data(a, lambda d: d.__setitem__(slice(None), np.log1p(d * 0.8))),
        "all_zero_cell.h5ad": with_X(a, sp.csr_matrix(a.X.toarray() * (np.arange(a.n_obs) != 7)[:, None])),
        "all_zero_gene.h5ad": with_X(a, sp.csr_matrix(a.X.toarray() * (np.arange(a.n_vars) != 5)[None, :])),
        "single_cell.h5ad": a[:1].copy(),
        "single_gene.h5ad": a[np.asarray(a.X[:, top].toarray()).ravel() > 0][:, [top]].copy(),
        "dense_X.h5ad": with_X(a, a.X.toarray()),
        "csc_X.h5ad": with_X(a, sp.csc_matrix(a.X)),
        "int64_X.h5ad": with_X(a, a.X.toarray().astype(np.int64)),
        "zero_cells.h5ad": a[:0].copy(),
        "zero_genes.h5ad": a[:, :0].copy(),
        "counts_in_layer.h5ad": None,
    }
    layered = a.copy()
    layered.layers["counts"] = layered.X.copy()
    layered.X = layered.X.copy()
    layered.X.data = np.log1p(layered.X.data)
    files["counts_in_layer.h5ad"] = layered

    dup_genes = a.copy()
    dup_genes.var_names = [a.var_names[0]] + a.var_names[1:].tolist()[:-1] + [a.var_names[0]]
    files["duplicated_genes.h5ad"] = dup_genes
    dup_cells = a.copy()
    dup_cells.obs_names = [a.obs_names[0]] * 2 + a.obs_names[2:].tolist()
    files["duplicated_cells.h5ad"] = dup_cells
    numeric_genes = a.copy()
    numeric_genes.var_names = [str(i) for i in range(a.n_vars)]
    files["numeric_gene_names.h5ad"] = numeric_genes

    conds = a.copy()
    conds.obs["cell_type_str"] = conds.obs["cell_type"].astype(str)
    conds.obs["numeric_cond"] = np.where(np.arange(a.n_obs) % 2, 3, 11)
    conds.obs["one_category"] = "only"
    conds.obs["with_missing"] = conds.obs["cell_type"].astype(object)
    conds.obs.iloc[[2, 9], conds.obs.columns.get_loc("with_missing")] = np.nan
    conds.obs["unused_levels"] = pd.Categorical(conds.obs["batch"].astype(str), categories=["10x_3prime_v1", "10x_3prime_v2", "10x_5prime", "never_used"])
    files["conditions.h5ad"] = conds

    unseen = a.copy()
    unseen.obs["cell_type"] = unseen.obs["cell_type"].astype(str)
    unseen.obs.iloc[0, unseen.obs.columns.get_loc("cell_type")] = "Martian"
    files["unseen_category.h5ad"] = unseen
    files["genes_reordered.h5ad"] = a[:, a.var_names[::-1]].copy()
    files["genes_partly_missing.h5ad"] = a[:, a.var_names[3:]].copy()
    extra = ad.AnnData(sp.hstack([a.X, sp.csr_matrix(np.ones((a.n_obs, 2), dtype=np.float32))]).tocsr(), obs=a.obs.copy())
    extra.var_names = a.var_names.tolist() + ["EXTRA1", "EXTRA2"]
    files["genes_extra.h5ad"] = extra

    for name, adata in files.items():
        adata.write_h5ad(os.path.join(INPUTS, name))
    full = open(os.path.join(INPUTS, "good.h5ad"), "rb").read()
    open(os.path.join(INPUTS, "truncated.h5ad"), "wb").write(full[: len(full) // 3])
    open(os.path.join(INPUTS, "not_h5ad.h5ad"), "w").write("cell,gene,count\nc1,g1,3\n")

    genes = a.var_names.tolist()
    rng = np.random.default_rng(0)
    emb = pd.DataFrame(rng.normal(size=(len(genes), 4)), index=genes)
    emb.iloc[:30].to_csv(os.path.join(INPUTS, "emb_missing_genes.csv"), header=False)
    with_nan = emb.copy()
    with_nan.iloc[4, 2] = np.nan
    with_nan.to_csv(os.path.join(INPUTS, "emb_nan.csv"), header=False)
    with open(os.path.join(INPUTS, "emb_ragged.csv"), "w") as fh:
        for i, g in enumerate(genes):
            fh.write(",".join([g] + ["0.5"] * (4 if i % 2 else 2)) + "\n")
    pd.DataFrame(rng.normal(size=(5, 4)), index=[f"NOT_A_GENE_{i}" for i in range(5)]).to_csv(
        os.path.join(INPUTS, "emb_no_overlap.csv"), header=False)
    print(f"wrote {len(os.listdir(INPUTS))} inputs to {INPUTS}")


if __name__ == "__main__":
    main()
