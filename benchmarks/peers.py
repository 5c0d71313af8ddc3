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


def _scvi_model(adata, batch_key, seed, epochs, n_latent=10):
    import scvi

    scvi.settings.seed = seed
    adata = adata.copy()
    adata.layers["counts"] = adata.X.copy()
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=batch_key)
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


def perturbation(args):
    """scGen's latent arithmetic on an scVI model (scGen itself is broken on PyPI): train scVI on
    the training cells (no batch covariate), delta = mean over cell types seen in both conditions
    of (mean stimulated latent - mean control latent), then decode the held-out control cells'
    latent + delta with their own library size, draw counts from scVI's likelihood (ZINB) and
    log-normalize them: log1p(CP10k). Sampling puts the prediction on the scale of real
    log-normalized cells (log1p of the decoder's expected CP10k would overstate sparse genes:
    E[log1p(x)] < log1p(E[x])), as scGen's own VAE works on log-normalized values."""
    import anndata as ad
    import torch

    train = ad.read_h5ad(args.data)
    query = ad.read_h5ad(args.predict)
    t0 = time.perf_counter()
    model, reg, train_seconds = _scvi_model(train, None, args.seed, args.epochs)
    z = model.get_latent_representation(reg)
    cond = train.obs[args.condition_key].astype(str).to_numpy()
    types = train.obs[args.cell_type_key].astype(str).to_numpy()
    deltas = []
    for t in sorted(set(types)):
        s, c = (types == t) & (cond == args.stimulated), (types == t) & (cond == args.control)
        if s.sum() and c.sum():
            deltas.append(z[s].mean(0) - z[c].mean(0))
    delta = np.mean(deltas, axis=0)
    q = query.copy()
    q.layers["counts"] = q.X.copy()
    zq = model.get_latent_representation(q)
    lib = np.asarray(q.X.sum(1)).ravel().astype(np.float32)
    module = model.module.eval()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        zt = torch.from_numpy((zq + delta).astype(np.float32))
        out = module.generative(zt, torch.from_numpy(np.log(lib))[:, None], torch.zeros(len(zt), 1, dtype=torch.long))
        counts = out["px"].sample().numpy().astype(np.float64)
    size = counts.sum(1, keepdims=True)
    size[size == 0] = 1
    pred = ad.AnnData(np.log1p(counts / size * 1e4).astype(np.float32), obs=query.obs.copy(), var=query.var.copy())
    pred.obs[args.condition_key] = args.stimulated
    pred.uns["peer"] = {"method": "scgen-style latent arithmetic on scVI", "n_types_in_delta": len(deltas)}
    pred.write_h5ad(args.out)
    import importlib.metadata as md

    print(json.dumps({"wall_seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                      "version": md.version("scvi-tools"), "n_cells": int(train.n_obs)}))


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
    args = p.parse_args()
    {"batch": batch, "perturbation": perturbation}[args.task](args)


if __name__ == "__main__":
    main()
