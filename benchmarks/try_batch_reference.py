"""Batch correction decoded three ways from one trained model (VAE only, fast network, 60 epochs):
with the batch masked (correct()'s default), under each reference batch, and averaged over all
batches (scVI's transform_batch list); scIB as in run_benchmarks.py.
Usage: python benchmarks/try_batch_reference.py DATASET SEED KL_WEIGHT [PARAMS_JSON]."""
import sys, json, os
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import numpy as np
import run_benchmarks as RB
from pysave import metrics as M

x = RB.batch_experiment(sys.argv[1:])
dataset, seed, kl, extra, adata, model, bk, lk = x.dataset, x.seed, x.kl, x.extra, x.adata, x.model, x.bk, x.lk
emb, train_seconds = x.embedding, x.train_seconds
print("trained", train_seconds, model.training_summary["vae"]["best_epoch"], flush=True)
batches = sorted(adata.obs[bk].astype(str).unique())
keys = []
X = model.correct(adata, layer_added=None)  # the batch masked
adata.obsm["masked"] = emb(X); keys.append("masked")
acc = np.zeros_like(X)
for b in batches:
    Xb = model.correct(adata, reference=b, layer_added=None)
    acc += Xb
    k = f"ref_{b}"[:40]; adata.obsm[k] = emb(Xb); keys.append(k)
adata.obsm["mean_batches"] = emb(acc / len(batches)); keys.append("mean_batches")
adata.obsm["latent"] = model.get_latent_representation(adata, key_added=None); keys.append("latent")
scored = M.batch_correction(adata, bk, lk, keys, pre_integrated_key="X_pca", seed=seed)
t = scored["table"][["Bio conservation", "Batch correction", "Total"]]
print(dataset, seed, kl, extra); print(t.round(3).to_string(), flush=True)
out = os.path.join(HERE, "results", "batch_reference", f"batchvar_{dataset}_s{seed}_kl{kl}{'_' + '_'.join(f'{k}{v}' for k, v in extra.items()) if extra else ''}.json")
json.dump({k: t.loc[k].to_dict() for k in keys}, open(out, "w"))
