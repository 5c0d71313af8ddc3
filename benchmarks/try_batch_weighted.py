"""Batch correction: the mean over batches (correct(reference="all")) weighted per cell by where
its neighbours come from. Decoding a cell under a batch that holds no cells like it (CellBench:
each batch has its own cell lines) is extrapolation; weighting each batch by its share among the
cell's k nearest neighbours in the latent keeps the average to batches where such cells exist.
No labels are used. One trained model (the harness's training, run_benchmarks.batch_experiment),
scIB as in run_benchmarks.py; every output rescaled to log1p(CP10k) profiles as correct() does.
Usage: python benchmarks/try_batch_weighted.py DATASET SEED KL_WEIGHT [PARAMS_JSON]."""
import os, sys

import numpy as np
from sklearn.neighbors import NearestNeighbors

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_benchmarks as RB
from pysave import data as D

x = RB.batch_experiment(sys.argv[1:])
adata, model, bk, emb = x.adata, x.model, x.bk, x.embedding
weights_hash = RB.weights_digest(model)
print("trained", round(x.train_seconds), "weights", weights_hash, flush=True)
batches = sorted(adata.obs[bk].astype(str).unique())
decoded = np.stack([model.transfer(adata, {bk: b}, output="mean", via="decoder").X for b in batches])  # (B, cells, genes)
own = adata.obs[bk].astype(str).to_numpy()
latent = model.get_latent_representation(adata)
variants = {"all": decoded.mean(0)}
shares = {}
for k in (15, 50):
    idx = NearestNeighbors(n_neighbors=k).fit(latent).kneighbors(latent, return_distance=False)
    share = np.stack([(own[idx] == b).mean(1) for b in batches], 1)  # (cells, B), rows sum to 1
    shares[k] = share
    variants[f"knn{k}"] = np.einsum("cb,bcg->cg", share, decoded)
    present = (share >= 0.1).astype(np.float64)  # uniform over the batches that hold >= 10% of the neighbours
    variants[f"present{k}"] = np.einsum("cb,bcg->cg", present / present.sum(1, keepdims=True), decoded)
variants["own"] = decoded[np.searchsorted(batches, own), np.arange(adata.n_obs)]  # the reconstruction: no correction
keys = []
for name, X in variants.items():
    adata.obsm[name] = emb(D.normalize_log_profiles(np.asarray(X, dtype=np.float32)))
    keys.append(name)
RB.batch_experiment_report(x, keys, "batch_weighted", "weighted", {
    "train_seconds": x.train_seconds, "weights_sha256_16": weights_hash, "batches": batches,
    "mean_neighbour_share_of_own_batch": {k: float(s[np.arange(len(own)), np.searchsorted(batches, own)].mean())
                                          for k, s in shares.items()}})
