"""How far from the real centres does the decoder put each combination's cells? (benchmark
diagnostic, not a test; no test cells)

    .venv/bin/python benchmarks/centre_errors.py --model-dir DIR --dataset pbmc_3tech --seed 0

On a model kept with --model-dir, the training cells of the harness's split are compared, per combination with >= 10 of them, in 30 PCs of their own
log1p(CP10k), with: their encoder means decoded ("decoder mean"), the same decoded and sampled
as counts ("sampled reconstruction"), and cells generated for their conditions by the product's
sampler without calibration ("generated") and, for a model trained since calibration existed, with
it ("generated, calibrated"). Centre error: distance between the centres over the real
cells' within-group standard deviation (the root of their total variance); spread: total variance
over the real cells'. The reconstructions are of the same cells, so their centre error is the
decoder's bias, not sampling noise. Writes results/centre_errors_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_CELLS = 10


def main():
    from sklearn.decomposition import PCA

    from pysave import data as D
    sys.path.insert(0, HERE)
    import eval_generation
    from try_centre_calibration import log_normalized

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--dataset", default="pbmc_3tech")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model, train, _, keys = eval_generation.kept_model(args.model_dir, args.dataset, args.seed)
    real = log_normalized(train)
    prep = model._prepare(train)
    mu, _ = model._encode(prep)
    decoded = model._decode(mu, prep.codes)
    library = np.asarray(train.X.sum(1)).ravel()
    rng = np.random.default_rng(args.seed)
    counts = rng.poisson(D.LogMeanInverter().rates(decoded, library))
    sampled = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    generated = model.generate_like(train.obs[keys], seed=args.seed, calibrate=False, **eval_generation.PRODUCT_SAMPLING).X
    pca = PCA(30, random_state=0).fit(real)
    sets = {"decoder mean": decoded, "sampled reconstruction": sampled, "generated": np.asarray(generated)}
    if "offset_scores" in (model.condition_latents or {}):  # a model trained since calibration: the product's output too
        sets["generated, calibrated"] = np.asarray(
            model.generate_like(train.obs[keys], seed=args.seed, **eval_generation.PRODUCT_SAMPLING).X)
    positions = {k: pca.transform(v) for k, v in sets.items()}
    R = pca.transform(real)
    groups = eval_generation.groups(train, keys)
    rows = []
    for g in np.unique(groups):
        cells = groups == g
        if cells.sum() < MIN_CELLS:
            continue
        variance = R[cells].var(0).sum()
        row = {"group": str(g), "cells": int(cells.sum())}
        for name, P in positions.items():
            row[f"{name} centre error"] = float(np.linalg.norm(P[cells].mean(0) - R[cells].mean(0)) / np.sqrt(variance))
            row[f"{name} spread"] = float(P[cells].var(0).sum() / variance)
        rows.append(row)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("group", "cells")}
    gene_means = {name: float(1 - ((v.mean(0) - real.mean(0)) ** 2).sum() / ((real.mean(0) - real.mean(0).mean()) ** 2).sum())
                  for name, v in sets.items()}
    out = {"model_dir": args.model_dir, "dataset": args.dataset, "seed": args.seed, "min_cells": MIN_CELLS, "groups": len(rows),
           "mean": mean, "per_gene_mean_r2_over_all_cells": gene_means, "per_group": rows}
    with open(os.path.join(HERE, "results", f"centre_errors_{args.dataset}_s{args.seed}.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps({"groups": len(rows), "mean": mean, "per_gene_mean_r2": gene_means}, indent=1))


if __name__ == "__main__":
    main()
