"""Peer methods for run_benchmarks.py, run in the peers' own virtual environment (not pysave's).

    benchmarks/peers-venv/bin/python benchmarks/peers.py batch --method harmony --data in.h5ad --out emb.npy ...
    benchmarks/peers-venv/bin/python benchmarks/peers.py perturbation --data train.h5ad --predict ctrl.h5ad --out pred.h5ad ...

Inputs and outputs are plain files (h5ad / npy) so that no object crosses the environments. The
harness passes the same cells, genes and seeds it gives pysave. Each call prints one JSON line
with its timings on stdout (the last line).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _log_norm(X):
    import scipy.sparse as sp

    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    lib = X.sum(1, keepdims=True)
    lib[lib == 0] = 1
    return np.log1p(X / lib * 1e4)


def _scvi_model(adata, batch_key, seed, epochs, n_latent=10, categorical_covariate_keys=None):
    import scvi

    scvi.settings.seed = seed
    adata = adata.copy()
    adata.layers["counts"] = adata.X.copy()
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=batch_key,
                                  categorical_covariate_keys=categorical_covariate_keys)
    model = scvi.model.SCVI(adata, n_latent=n_latent)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False, batch_size=256)
    return model, adata, time.perf_counter() - t0


def batch(args):
    import anndata as ad

    adata = ad.read_h5ad(args.data)  # raw counts in X, obsm["X_pca"]: the shared unintegrated PCA
    t0 = time.perf_counter()
    train_seconds = None
    if args.method == "harmony":
        import harmonypy

        ho = harmonypy.run_harmony(adata.obsm["X_pca"], adata.obs, args.batch_key, random_state=args.seed, verbose=False)
        z = np.asarray(ho.Z_corr)
        emb = z.T if z.shape[0] != adata.n_obs else z
    elif args.method == "scanorama":
        import scanorama

        X = _log_norm(adata.X)
        batches = adata.obs[args.batch_key].astype(str).to_numpy()
        order = sorted(set(batches))
        idx = [np.flatnonzero(batches == b) for b in order]
        np.random.seed(args.seed)
        integrated, _ = scanorama.integrate([X[i] for i in idx], [list(adata.var_names)] * len(idx), dimred=50, seed=args.seed,
                                            verbose=0)
        emb = np.zeros((adata.n_obs, integrated[0].shape[1]), dtype=np.float32)
        for i, z in zip(idx, integrated):
            emb[i] = z
    elif args.method == "scvi":
        model, _, train_seconds = _scvi_model(adata, args.batch_key, args.seed, args.epochs)
        emb = model.get_latent_representation()
    else:
        raise SystemExit(f"unknown batch method {args.method}")
    np.save(args.out, np.asarray(emb, dtype=np.float32))
    import importlib.metadata as md

    pkg = {"harmony": "harmonypy", "scanorama": "scanorama", "scvi": "scvi-tools"}[args.method]
    print(json.dumps({"wall_seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                      "version": md.version(pkg), "n_cells": int(adata.n_obs)}))


def _sample_log_normalized(model, z, library, batch_codes, cat_codes=None, seed=0):
    """Counts drawn from scVI's likelihood (ZINB) at latents ``z``, as log1p(CP10k)."""
    import torch

    torch.manual_seed(seed)
    module = model.module.eval()
    with torch.no_grad():
        out = module.generative(torch.as_tensor(z, dtype=torch.float32), torch.log(torch.as_tensor(library, dtype=torch.float32))[:, None],
                                torch.as_tensor(batch_codes, dtype=torch.long)[:, None],
                                cat_covs=None if cat_codes is None else torch.as_tensor(cat_codes, dtype=torch.long))
        counts = out["px"].sample().numpy().astype(np.float64)
    size = counts.sum(1, keepdims=True)
    size[size == 0] = 1
    return np.log1p(counts / size * 1e4).astype(np.float32)


def _expected_log_normalized(model, z, library, batch_codes, seed=0, draws=16):
    """E[log1p(CP10k)] under scVI's likelihood at latents ``z``, averaged over ``draws`` ZINB draws
    per cell (the scale real log-normalized cells are on; log1p of the decoder's mean would overstate
    sparse genes)."""
    return np.mean([_sample_log_normalized(model, z, library, batch_codes, seed=seed + i) for i in range(draws)], axis=0)


def _codes(model, key, values):
    """scVI's integer codes of ``values`` for a registered categorical field ("batch" or a covariate)."""
    from scvi import REGISTRY_KEYS

    if key == "batch":
        cats = list(model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)
    else:
        cats = list(model.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).mappings[key])
    return np.array([cats.index(v) for v in values])


def generate(args):
    """scVI as a conditional generator: trained with the first condition as its batch and the
    others as categorical covariates; each requested cell is z ~ N(0, I) (scVI's prior), decoded
    under its conditions with the library size of a random training cell of the same conditions,
    counts drawn from the ZINB likelihood, written as log1p(CP10k)."""
    import anndata as ad

    keys = args.keys
    train = ad.read_h5ad(args.data)
    request = ad.read_h5ad(args.predict)
    for k in keys:
        train.obs[k] = train.obs[k].astype(str)
    t0 = time.perf_counter()
    model, _, train_seconds = _scvi_model(train, keys[0], args.seed, args.epochs, categorical_covariate_keys=keys[1:] or None)
    rng = np.random.default_rng(args.seed)
    group = train.obs[keys].astype(str).agg(" | ".join, axis=1).to_numpy()
    want = request.obs[keys].astype(str).agg(" | ".join, axis=1).to_numpy()
    lib_all = np.asarray(train.X.sum(1)).ravel()
    library = np.array([rng.choice(lib_all[group == g]) if (group == g).any() else rng.choice(lib_all) for g in want])
    z = rng.standard_normal((request.n_obs, model.module.n_latent)).astype(np.float32)
    batch_codes = _codes(model, "batch", request.obs[keys[0]].astype(str))
    cat_codes = np.stack([_codes(model, k, request.obs[k].astype(str)) for k in keys[1:]], 1) if keys[1:] else None
    X = _sample_log_normalized(model, z, library, batch_codes, cat_codes, args.seed)
    out = ad.AnnData(X, obs=request.obs[keys].copy(), var=train.var[[]].copy())
    out.uns["peer"] = {"method": "scVI prior sample, ZINB counts, log1p(CP10k)"}
    out.write_h5ad(args.out)
    import importlib.metadata as md

    print(json.dumps({"wall_seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                      "version": md.version("scvi-tools"), "n_cells": int(train.n_obs)}))


def perturbation(args):
    """scGen's latent arithmetic on an scVI model (scGen itself is broken on PyPI): train scVI on
    the training cells (no batch covariate), delta = mean over cell types seen in both conditions
    of (mean stimulated latent - mean control latent), then decode the held-out control cells'
    latent + delta with their own library size, draw counts from scVI's likelihood (ZINB) and
    log-normalize them: log1p(CP10k). Sampling puts the prediction on the scale of real
    log-normalized cells (log1p of the decoder's expected CP10k would overstate sparse genes:
    E[log1p(x)] < log1p(E[x])), as scGen's own VAE works on log-normalized values."""
    import anndata as ad

    train = ad.read_h5ad(args.data)
    query = ad.read_h5ad(args.predict)
    t0 = time.perf_counter()
    if args.method == "label":
        # scVI's own counterfactual: condition as its batch; the control cells' latents decoded under "stimulated".
        train.obs[args.condition_key] = train.obs[args.condition_key].astype(str)
        model, _, train_seconds = _scvi_model(train, args.condition_key, args.seed, args.epochs)
        q = query.copy()
        q.layers["counts"] = q.X.copy()
        q.obs[args.condition_key] = args.control
        zq = model.get_latent_representation(q)
        lib = np.asarray(q.X.sum(1)).ravel().astype(np.float32)
        X = _sample_log_normalized(model, zq, lib, _codes(model, "batch", [args.stimulated] * q.n_obs), seed=args.seed)
        return _write_prediction(args, query, X, {"method": "scVI, condition as batch, control latents decoded as stimulated"},
                                 t0, train_seconds, train.n_obs)
    model, reg, train_seconds = _cached_scvi_model(train, args)
    z = model.get_latent_representation(reg)
    cond = train.obs[args.condition_key].astype(str).to_numpy()
    types = train.obs[args.cell_type_key].astype(str).to_numpy()
    deltas, origins = [], []
    for t in sorted(set(types)):
        s, c = (types == t) & (cond == args.stimulated), (types == t) & (cond == args.control)
        if s.sum() and c.sum():
            deltas.append(z[s].mean(0) - z[c].mean(0))
            origins.append(z[c].mean(0))
    q = query.copy()
    q.layers["counts"] = q.X.copy()
    zq = model.get_latent_representation(q)
    if args.method == "weighted" and len(origins) > 1:  # one type: its shift, as pysave does
        # pysave's per-cell weighting of the types (pysave.shift.latent_shifts, same width), here in
        # scVI's latent: shows how much of pysave's shift gain is the weighting itself.
        from scipy.spatial.distance import cdist, pdist

        d = cdist(zq.astype(np.float64), np.stack(origins).astype(np.float64), "sqeuclidean")
        w = np.exp(-(d - d.min(1, keepdims=True)) / (args.bandwidth * np.median(pdist(np.stack(origins), "sqeuclidean"))))
        shift = (w / w.sum(1, keepdims=True)) @ np.stack(deltas)
    else:
        shift = np.mean(deltas, axis=0)
    lib = np.asarray(q.X.sum(1)).ravel().astype(np.float32)
    zero = np.zeros(q.n_obs, dtype=int)
    if args.output == "input_plus_change":
        # pysave's transfer(output="input_plus_change") given to the peer: each control cell's own
        # log1p(CP10k) plus the decoded change (shifted minus unshifted latent), clipped at 0.
        change = (_expected_log_normalized(model, (zq + shift).astype(np.float32), lib, zero, seed=args.seed)
                  - _expected_log_normalized(model, zq.astype(np.float32), lib, zero, seed=args.seed))
        X = np.maximum(_log_norm(q.X) + change, 0).astype(np.float32)
    else:
        X = _sample_log_normalized(model, (zq + shift).astype(np.float32), lib, zero, seed=args.seed)
    return _write_prediction(args, query, X, {"method": f"scgen-style latent arithmetic on scVI ({args.method})",
                                              "output": args.output, "n_types_in_delta": len(deltas)},
                             t0, train_seconds, train.n_obs)


def _cached_scvi_model(train, args):
    """scVI without batch on ``train``: loaded from ``--model-cache`` when an earlier call trained it
    there (the arithmetic / weighted / input_plus_change variants share one model per held-out type
    and seed), else trained (and saved there). Returns (model, registered AnnData, training seconds)."""
    import os

    import scvi

    if args.model_cache and os.path.exists(os.path.join(args.model_cache, "model.pt")):
        reg = train.copy()
        reg.layers["counts"] = reg.X.copy()
        scvi.model.SCVI.setup_anndata(reg, layer="counts")
        model = scvi.model.SCVI.load(args.model_cache, adata=reg, accelerator="cpu")
        with open(os.path.join(args.model_cache, "train_seconds.json")) as fh:
            args.loaded_from_cache = True  # reported, so that the harness counts the training time once more
            return model, reg, json.load(fh)["train_seconds"]
    model, reg, train_seconds = _scvi_model(train, None, args.seed, args.epochs)
    if args.model_cache:
        model.save(args.model_cache, overwrite=True)
        with open(os.path.join(args.model_cache, "train_seconds.json"), "w") as fh:
            json.dump({"train_seconds": train_seconds}, fh)
    return model, reg, train_seconds


def _write_prediction(args, query, X, info, t0, train_seconds, n_train):
    import anndata as ad
    import importlib.metadata as md

    pred = ad.AnnData(X, obs=query.obs.copy(), var=query.var.copy())
    pred.obs[args.condition_key] = args.stimulated
    pred.uns["peer"] = info
    pred.write_h5ad(args.out)
    print(json.dumps({"wall_seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                      "loaded_from_cache": getattr(args, "loaded_from_cache", False),
                      "version": md.version("scvi-tools"), "n_cells": int(n_train)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="task", required=True)
    b = sub.add_parser("batch")
    b.add_argument("--method", required=True, choices=["harmony", "scanorama", "scvi"])
    b.add_argument("--data", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--batch-key", default="batch")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--epochs", type=int, default=200)
    q = sub.add_parser("perturbation")
    q.add_argument("--data", required=True)
    q.add_argument("--predict", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--condition-key", default="condition")
    q.add_argument("--cell-type-key", default="cell_type")
    q.add_argument("--control", default="control")
    q.add_argument("--stimulated", default="stimulated")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--epochs", type=int, default=200)
    q.add_argument("--method", default="arithmetic", choices=["arithmetic", "weighted", "label"],
                   help="arithmetic: scGen's latent shift; weighted: the types' shifts weighted per cell as pysave's "
                        "via='shift' does; label: scVI with the condition as batch, decoded as stimulated")
    q.add_argument("--bandwidth", type=float, default=0.5, help="weighted: the kernel width (pysave's SHIFT_BANDWIDTH)")
    q.add_argument("--model-cache", default=None, help="arithmetic/weighted: a folder to keep the trained scVI in and "
                   "reuse it from (one per training set, seed and epochs)")
    q.add_argument("--output", default="sample", choices=["sample", "input_plus_change"],
                   help="arithmetic/weighted: counts sampled at the shifted latent, or the control cells' own "
                        "log1p(CP10k) plus the change in expected log1p(CP10k) (pysave's input_plus_change)")
    g = sub.add_parser("generate")
    g.add_argument("--data", required=True, help="training cells (counts)")
    g.add_argument("--predict", required=True, help="an h5ad whose obs rows are the cells to generate")
    g.add_argument("--out", required=True)
    g.add_argument("--keys", nargs="+", required=True, help="condition columns; the first is scVI's batch")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--epochs", type=int, default=200)
    args = p.parse_args()
    {"batch": batch, "perturbation": perturbation, "generate": generate}[args.task](args)


if __name__ == "__main__":
    main()
