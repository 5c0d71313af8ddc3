"""Would overdispersed counts close the generation gap? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_overdispersion.py --model-dir DIR --dataset pbmc_3tech --seed 0

Generated cells have less within-group spread than real ones (benchmarks/README.md). pysave draws
Poisson counts around the decoder mean; this tries negative-binomial counts instead, with a
per-gene inverse dispersion theta fitted by maximum likelihood on training cells (up to 3,000)
reconstructed by the model, and NB rates whose expected log1p(CP10k) equals the decoder mean
(the Poisson inverter's table averaged over Gamma quantiles). Both sets share the same decoded
means (a model saved by ``run_benchmarks.py --model-dir``, product sampling defaults at w = 2) and
are scored with the generation protocol. Writes results/overdispersion_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
THETAS = np.r_[np.logspace(-1.5, 2.5, 17), np.inf]  # inf: Poisson
QUANTILES = 64


def nb_inverters(poisson):
    """One inverter per theta: pysave's Poisson ``LogMeanInverter`` with its table of
    E[log1p(sK)] replaced by the one for K ~ NB(mu, theta) (the Poisson table averaged over
    Gamma(theta, 1/theta) quantiles of the rate)."""
    import copy

    from scipy.stats import gamma

    inverters = []
    for theta in THETAS:
        if np.isinf(theta):
            inverters.append(poisson)
            continue
        x = gamma.ppf((np.arange(QUANTILES) + 0.5) / QUANTILES, theta) / theta
        table = np.empty_like(poisson.table)
        for b in range(table.shape[0]):
            table[b] = np.interp(poisson.lam[:, None] * x[None], poisson.lam, poisson.table[b]).mean(1)
        nb = copy.copy(poisson)
        nb.table = np.maximum.accumulate(table, axis=1)
        inverters.append(nb)
    return inverters


def invert(inverters, log_mean, library, theta_index):
    """NB means (cells x genes) whose expected log1p(CP10k) is ``log_mean``; gene j uses THETAS[theta_index[j]]."""
    out = np.empty(log_mean.shape)
    for t in np.unique(theta_index):
        cols = theta_index == t
        out[:, cols] = inverters[t].rates(log_mean[:, cols], library)
    return out


def fit_theta(model, train, inverters, seed, n_cells=3000):
    """Per-gene theta (index into THETAS) maximising the NB likelihood of the training counts
    around the model's reconstructions (encoder mean, own conditions)."""
    from scipy.special import gammaln

    rng = np.random.default_rng(seed)
    cells = train[np.sort(rng.choice(train.n_obs, min(n_cells, train.n_obs), replace=False))].copy()
    prep = model._prepare(cells)
    mu_z, _ = model._encode(prep)
    log_mean = model._decode(mu_z, prep.codes).astype(np.float64)
    K = np.asarray(cells.X.todense() if hasattr(cells.X, "todense") else cells.X, dtype=np.float64)
    library = K.sum(1)
    loglik = np.empty((len(THETAS), K.shape[1]))
    for i, theta in enumerate(THETAS):
        mu = invert(inverters, log_mean, library, np.full(K.shape[1], i)).clip(1e-8)
        if np.isinf(theta):
            ll = K * np.log(mu) - mu
        else:
            ll = gammaln(K + theta) - gammaln(theta) + theta * np.log(theta / (theta + mu)) + K * np.log(mu / (theta + mu))
        loglik[i] = ll.sum(0)
    return loglik.argmax(0)


def run(model_dir, dataset, seed, guidance=2.0) -> dict:
    import anndata as ad

    from pysave import data as D
    sys.path.insert(0, HERE)
    import eval_generation

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    inverters = nb_inverters(D.LogMeanInverter())
    theta_index = fit_theta(model, train, inverters, seed)

    log_mean = np.asarray(model.generate_like(test.obs[keys], seed=seed, output="mean", guidance=guidance).X, dtype=np.float64)
    codes = model._prepare(test).codes
    lib_mean, lib_sd = D.library_parameters(model.library_stats, codes, model._scaler_index(codes))

    def sampled(kind):
        rng = np.random.default_rng([seed, 7])
        library = np.exp(lib_mean + lib_sd * rng.standard_normal(len(log_mean)))
        if kind == "poisson":
            X = D.draw_counts(inverters[-1].rates(log_mean, library), rng)  # THETAS[-1] = inf: Poisson
        else:  # the product's Gamma-Poisson draw; genes the fit left at theta = inf stay Poisson
            X = D.draw_counts(invert(inverters, log_mean, library, theta_index), rng, THETAS[theta_index], rng)
        return ad.AnnData(X=X, obs=test.obs.copy(), var=test.var[[]].copy(),
                          uns={"pysave": {"X": "log1p(CP10k)", "output": "sample"}})

    finite = np.isfinite(THETAS[theta_index])
    return eval_generation.scored_result(
        model_dir, dataset, seed, train, test, keys, {k: sampled(k) for k in ("poisson", "negative_binomial")},
        guidance=guidance, genes_poisson=int((~finite).sum()),
        theta_median_overdispersed=float(np.median(THETAS[theta_index][finite])))


def main():
    sys.path.insert(0, HERE)
    import eval_generation

    r = eval_generation.diagnostic_main(__doc__, run, "overdispersion", guidance=True)
    print(f"  Poisson {r['poisson']['W1']:.3f} / {r['poisson']['MMD']:.3f}, NB {r['negative_binomial']['W1']:.3f} / "
          f"{r['negative_binomial']['MMD']:.3f} ({r['genes_poisson']} genes kept Poisson)")


if __name__ == "__main__":
    main()
