"""How high can the unseen-combination r2 go when the input is the type's control cells?
(benchmark diagnostic, not a test; no model)

    .venv/bin/python benchmarks/try_unseen_ceiling.py --seeds 0 1 2 3

run_benchmarks.run_unseen halves a held-out (stimulated, type) combination at random (half A is
the reference, half B the noise floor) and gives the methods that start from cells |B| of the
type's control cells. Here those cells get the REAL mean change, which no method can know: half
B's mean log1p(CP10k) minus the mean of all the type's control cells, added to each cell's own
log1p(CP10k) and clipped at 0, as ``transfer(output="input_plus_change")`` adds its predicted
change. Scored like the harness's rows (the generation protocol against half A). The score is
what a perfect change prediction reaches with this input; the floor is what a perfect generator
reaches (half B is |B| real cells of the combination). Writes results/unseen_ceiling_kang.json.
"""
from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import scipy.sparse as sp

import run_benchmarks as RB  # beside this script


def log_normalized(adata) -> np.ndarray:
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=np.float64)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


def main() -> None:
    from pysave import metrics as M

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    adata, ck, tk, ctrl, stim, cond, types = RB.perturbation_data("kang")
    rows = []
    for seed in args.seeds:
        for t in sorted(set(types)):
            # The harness's split and input, drawn the same way (run_benchmarks.run_unseen).
            control = adata[(types == t) & (cond == ctrl)]
            reference, floor, query = RB.unseen_split(adata[RB.held_out_cells(adata, "kang", t)], control, seed)
            change = log_normalized(floor).mean(0) - log_normalized(control).mean(0)
            moved = ad.AnnData(np.maximum(log_normalized(query) + change, 0).astype(np.float32), obs=query.obs.copy(),
                               var=query.var.copy())
            moved.obs[ck], moved.obs[tk] = stim, t
            g = M.generation_fidelity(reference, moved, [ck, tk], floor=floor, seed=seed)["per_group"].reset_index().iloc[0]
            rows.append({"seed": seed, "type": t, "real_change_mean_r2": float(g["mean_r2"]),
                         "real_change_W1_over_floor": float(g["W1"] / g["floor_W1"]), "real_change_MMD": float(g["MMD"]),
                         "floor_mean_r2": float(g["floor_mean_r2"]), "floor_MMD": float(g["floor_MMD"])})
            print(rows[-1], flush=True)
    RB.write_row_summary("unseen_ceiling_kang", rows, ("seed", "type"), dataset="kang", seeds=args.seeds,
                         input="|B| control cells of the type (run_benchmarks.run_unseen's split)",
                         change="half B's mean log1p(CP10k) minus all the type's control cells' mean (an oracle)")


if __name__ == "__main__":
    main()
