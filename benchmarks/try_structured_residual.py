"""Can a low-rank residual restore the within-group spread the decoder loses? (benchmark
diagnostic, not a test)

    .venv/bin/python benchmarks/try_structured_residual.py --model-dir DIR --dataset pbmc_3tech --seed 0

Generated groups hold about 56-64% of the real within-group variance, and the oracle that only
widens them ("scale", try_sampling_spread.py) would beat the per-group Gaussian on pbmc_3tech.
Per-gene count noise (negative binomial) widened them in every direction and lost. This tries
the structured version: probabilistic PCA (Tipping & Bishop) on the training cells' residuals,
log1p(CP10k) minus the decoder mean of their own encoding. The top-k directions, with the
isotropic part (the mean of the other eigenvalues, mostly count noise) taken off, give a
low-rank Gaussian; each generated cell's decoder mean gets one draw of it (clipped at 0) before
the product's count sampling. One residual model for all conditions, fitted on training cells
only, so it could serve unseen combinations as well. Writes results/structured_residual_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RANKS = (5, 10, 30)


def run(model_dir, dataset, seed) -> dict:
    import anndata as ad

    from pysave import metrics as M
    sys.path.insert(0, HERE)
    import eval_generation

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    product = dict(seed=seed, n_steps=10, solver="midpoint", guidance=2.0)
    sets = {"default (w2)": model.generate_like(test.obs[keys], output="sample", **product)}
    means = model.generate_like(test.obs[keys], output="mean", **product)
    _, codes = model._generation_plan(test.obs[keys], 2.0, 10, "midpoint")

    prep = model._prepare(train)
    residual = M.log_normalized(train) - model._decode(model._encode(prep)[0], prep.codes)
    residual -= residual.mean(0)
    _, singular, directions = np.linalg.svd(residual, full_matrices=False)
    eigen = singular ** 2 / (len(residual) - 1)
    info = {"residual_variance": float(eigen.sum()), "top_eigenvalues": eigen[:10].tolist()}
    for k in RANKS:
        isotropic = eigen[k:].mean()
        loadings = directions[:k].T * np.sqrt(np.maximum(eigen[:k] - isotropic, 0.0))
        info[f"k{k}_added_variance"] = float((loadings ** 2).sum())
        noise = np.random.default_rng([seed, k]).standard_normal((means.n_obs, k)) @ loadings.T
        shifted = np.maximum(means.X + noise, 0.0).astype(np.float32)
        sampled = model._output_sampler("sample", seed)(shifted, codes)
        sets[f"ppca k{k}"] = ad.AnnData(sampled, obs=means.obs.copy(), var=means.var.copy())
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets, residual=info)


def main():
    sys.path.insert(0, HERE)
    import eval_generation

    r = eval_generation.diagnostic_main(__doc__, run, "structured_residual")
    print("  residual:", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r["residual"].items()})
    eval_generation.print_scored_sets(r)


if __name__ == "__main__":
    main()
