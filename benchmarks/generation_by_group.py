"""Generation scored group by group against the per-group Gaussian (benchmark diagnostic, not a test).

    .venv/bin/python benchmarks/generation_by_group.py --dataset baron_human --epochs product \
        --seeds 0 1 4 5 --model-dir DIR

The generation targets compare means over groups (a group: one combination of the conditions),
each group counted once however few its test cells. This scores the product's generation
(``try_spread_variants.SAMPLING``: generate's defaults) of the harness's kept model of each seed
(``eval_generation.trained_model``; trained into ``--model-dir`` when not kept there) and prints
and keeps, for every group, its training and test cells, W1 and MMD of pysave, of the noise
floor and of the Gaussian, and pysave's MMD minus the Gaussian's. Then that difference by group
size and by the value of the last condition (the cell type). And whether generated cells look
like their type: a 15-nearest-neighbour classifier of that condition, fitted on the training
cells in the test cells' PC space, gives the share of each type's generated cells (and of its
test cells) it calls that type. Writes
results/generation_by_group_<dataset>.json (benchmarks/README.md, "Baron's generation, group by
group").
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [0, 10, 20, 50, 100, 100_000]  # training cells per group, the bins of the summary


def by_seed(dataset: str, seed: int, epochs, model_dir: str):
    import pandas as pd
    import torch

    import eval_generation as E
    from try_spread_variants import SAMPLING

    torch.set_num_threads(1)
    train, test, keys, batch_key = E.split(dataset, seed)
    model, _ = E.trained_model(dataset, seed, epochs, E.FAST, train, keys, batch_key, model_dir)
    train, test = train[:, model.genes].copy(), test[:, model.genes].copy()
    generated = model.generate_like(test.obs[keys], seed=seed, **SAMPLING)
    scored = E.score(train, test, keys, seed, {"sample": generated})
    table = pd.DataFrame(scored["outputs"]["sample"]["per_group"]).set_index("group")
    gaussian = E.gaussian_baseline(train, test, keys, seed)
    table["gaussian_W1"], table["gaussian_MMD"] = gaussian["W1"].reindex(table.index), gaussian["MMD"].reindex(table.index)
    table["n_train"] = pd.Series(E.groups(train, keys)).value_counts().reindex(table.index).values
    table["MMD_minus_gaussian"] = table["MMD"] - table["gaussian_MMD"]
    summary = {"W1_over_floor": scored["outputs"]["sample"]["pysave"]["W1"] / scored["noise_floor"]["W1"],
               "MMD_minus_gaussian": scored["outputs"]["sample"]["pysave"]["MMD"] - scored["gaussian_pca"]["MMD"],
               "called_own_type": called_own_type(train, test, generated, keys[-1], seed)}
    return table, summary


def called_own_type(train, test, generated, key: str, seed: int) -> dict:
    """{type: {"test": share, "generated": share}}: of each type's cells, the share a
    15-nearest-neighbour classifier fitted on the training cells (test cells' PC space) calls that type."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from pysave import metrics as M

    space = M.fit_reference_space(test, seed=seed)
    knn = KNeighborsClassifier(15).fit(space.project(train), train.obs[key].astype(str).values)
    shares = {}
    for name, cells in (("test", test), ("generated", generated)):
        called, truth = knn.predict(space.project(cells)), cells.obs[key].astype(str).values
        for kind in np.unique(truth):
            shares.setdefault(kind, {})[name] = float((called[truth == kind] == kind).mean())
    return shares


def main() -> None:
    import numpy as np
    import pandas as pd

    sys.path.insert(0, HERE)
    import eval_generation as E

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="baron_human")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", default="product", help='VAE epochs, or "product" (eval_generation.train_options)')
    p.add_argument("--model-dir", required=True)
    args = p.parse_args()
    tables, result = [], {"dataset": args.dataset, "epochs": str(args.epochs), "seeds": {}}
    for seed in args.seeds:
        table, summary = by_seed(args.dataset, seed, E.epochs_arg(args.epochs), args.model_dir)
        columns = ["n_train", "n_real", "W1", "floor_W1", "gaussian_W1", "MMD", "floor_MMD", "gaussian_MMD", "MMD_minus_gaussian"]
        print(f"seed {seed}: W1 / floor {summary['W1_over_floor']:.3f}x, MMD - Gaussian's {summary['MMD_minus_gaussian']:+.4f}")
        print(table[columns].sort_values("MMD_minus_gaussian").round(3).to_string(), flush=True)
        result["seeds"][str(seed)] = {**summary, "groups": table.reset_index().to_dict(orient="records")}
        tables.append(table.assign(seed=seed))
    every = pd.concat(tables)
    every["size"] = pd.cut(every["n_train"], SIZES, right=False).astype(str)
    every["type"] = every.index.str.split(" | ", regex=False).str[-1]
    for column in ("size", "type"):
        # the mean of the difference over (group, seed) pairs, and its share of the seeds' means
        grouped = every.groupby(column)["MMD_minus_gaussian"]
        share = every.groupby(column)["MMD_minus_gaussian"].sum() / every.groupby("seed").size().mean() / len(args.seeds)
        part = pd.DataFrame({"pairs": grouped.size(), "mean": grouped.mean(), "share_of_mean": share})
        print(part.round(4).to_string())
        result[f"by_{column}"] = part.reset_index().to_dict(orient="records")
    kinds = sorted({k for v in result["seeds"].values() for k in v["called_own_type"]})
    own = {k: {name: float(np.mean([v["called_own_type"][k][name] for v in result["seeds"].values() if k in v["called_own_type"]]))
               for name in ("test", "generated")} for k in kinds}
    print("called its own type (mean over seeds):", json.dumps({k: {n: round(x, 3) for n, x in v.items()} for k, v in own.items()}))
    result["called_own_type"] = own
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"generation_by_group_{args.dataset}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    os.replace(path + ".tmp", path)
    print("wrote", path)


if __name__ == "__main__":
    main()
