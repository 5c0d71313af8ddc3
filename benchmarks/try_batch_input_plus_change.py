"""Is transfer's output="input_plus_change" a batch correction? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_batch_input_plus_change.py DATASET SEED KL_WEIGHT

Trains the harness's model (fast network, 60 VAE epochs, flow 1 epoch) conditioned on the batch
and scores with scIB, as run_benchmarks.py does, two corrected expressions: ``correct()`` (the
decoder mean with the batch masked) and ``transfer(adata, {batch: None}, via="decoder",
output="input_plus_change")`` (each cell's own expression plus the decoded change of masking its
batch). Writes results/batch_reference/input_plus_change_<dataset>_s<seed>_kl<kl>.json.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_benchmarks as RB  # noqa: E402
from pysave import metrics as M  # noqa: E402

x = RB.batch_experiment(sys.argv[1:4])
dataset, seed, kl, adata, model, bk, lk = x.dataset, x.seed, x.kl, x.adata, x.model, x.bk, x.lk
embedding, train_seconds = x.embedding, x.train_seconds

adata.obsm["masked"] = embedding(model.correct(adata, layer_added=None))
adata.obsm["input_plus_change"] = embedding(model.transfer(adata, {bk: None}, via="decoder", output="input_plus_change").X)
table = M.batch_correction(adata, bk, lk, ["masked", "input_plus_change"], pre_integrated_key="X_pca", seed=seed)["table"]
table = table[["Bio conservation", "Batch correction", "Total"]]
print(dataset, seed, kl)
print(table.round(3).to_string(), flush=True)
out = os.path.join(HERE, "results", "batch_reference", f"input_plus_change_{dataset}_s{seed}_kl{kl}.json")
with open(out + ".tmp", "w") as fh:
    json.dump({"dataset": dataset, "seed": seed, "kl_weight": kl, "train_seconds": train_seconds,
               "scib": {k: {c: float(v) for c, v in row.items()} for k, row in table.iterrows()}}, fh, indent=1)
os.replace(out + ".tmp", out)
