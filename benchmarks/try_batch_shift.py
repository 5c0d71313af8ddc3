"""Batch correction by the latent shift (transfer(via="shift"): each cell's encoder mean moved by the
optimal-transport displacement of its nearest training cells towards a reference batch, then
decoded under that batch), against correct()'s masked batch, from one trained model (the
harness's training: fast network, 60 epochs at lr 1e-3, the flow for one epoch only); scIB as in
run_benchmarks.py.
Usage: python benchmarks/try_batch_shift.py DATASET SEED KL_WEIGHT [PARAMS_JSON]."""
import sys, json, os
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_benchmarks as RB
from pysave import metrics as M

x = RB.batch_experiment(sys.argv[1:])
adata, model, bk, emb = x.adata, x.model, x.bk, x.embedding
print("trained", round(x.train_seconds), flush=True)
batches = adata.obs[bk].astype(str).value_counts().index.tolist()  # largest first
keys = []
adata.obsm["masked"] = emb(model.correct(adata, layer_added=None)); keys.append("masked")
acc = None
for b in batches:
    moved = model.transfer(adata, {bk: b}, via="shift")
    acc = moved.X.copy() if acc is None else acc + moved.X
    k = f"shift_to_{b}"[:40]; adata.obsm[k] = emb(moved.X); keys.append(k)
    adata.obsm[k + "_latent"] = moved.obsm["X_save"]; keys.append(k + "_latent")
adata.obsm["shift_mean"] = emb(acc / len(batches)); keys.append("shift_mean")
scored = M.batch_correction(adata, bk, x.lk, keys, pre_integrated_key="X_pca", seed=x.seed)
t = scored["table"][["Bio conservation", "Batch correction", "Total"]]
print(x.dataset, x.seed, x.kl, x.extra, "largest batch first:", batches); print(t.round(3).to_string(), flush=True)
tag = "".join(f"_{k}{v}" for k, v in x.extra.items())
out = os.path.join(HERE, "results", "batch_shift", f"shift_{x.dataset}_s{x.seed}_kl{x.kl}{tag}.json")
with open(out + ".tmp", "w") as fh:  # a stopped run leaves no half-written result
    json.dump({"batches_largest_first": batches, "train_seconds": x.train_seconds,
               "table": {k: scored["table"].loc[k].to_dict() for k in keys}}, fh, indent=1)
os.replace(out + ".tmp", out)
