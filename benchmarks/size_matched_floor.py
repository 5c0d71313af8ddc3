"""A perfect generator at the generated set's size (benchmark diagnostic, not a test).

    .venv/bin/python benchmarks/size_matched_floor.py [--datasets pbmc_3tech ...] [--seeds 0 1] [--draws 3]

The protocol's noise floor compares the held-out cells of a group with *all* its training cells,
about 4x as many as a generated set (which has the test set's size), and W1 falls with the number
of points. Here real training cells stand in for the generated cells: for each group, as many as
the group has test cells, drawn at random (with replacement only where the group has fewer
training than test cells), scored by ``metrics.generation_fidelity`` exactly as a generated set.
That is what a generator that reproduced the training cells would score: the reachable W1 / floor
and MMD on the same splits. Mean over ``--draws`` draws. Writes results/size_matched_floor.json.
``pysave evaluate`` reports such draws per group (mean of 3) as ``floor_sized_*`` (since 2026-12-05).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATASETS = ["pbmc_3tech", "baron_human", "scvelo_pancreas", "pbmc4k"]


def drawn_like_test(train_groups: np.ndarray, test_groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of training cells: per test group, as many as it has test cells (the draw of
    ``metrics.floor_cells_like``, which ``pysave evaluate`` reports as ``floor_sized_*``)."""
    from pysave.metrics import floor_cells_like

    rows = []
    for g in np.unique(test_groups):
        pool, n = np.flatnonzero(train_groups == g), int((test_groups == g).sum())
        if len(pool):
            rows.append(floor_cells_like(pool, n, rng))
    return np.concatenate(rows)


def score(dataset: str, seed: int, draws: int) -> dict:
    from pysave import metrics as M

    sys.path.insert(0, HERE)
    import eval_generation

    train, test, keys, _ = eval_generation.split(dataset, seed)
    train_groups, test_groups = eval_generation.groups(train, keys), eval_generation.groups(test, keys)
    runs = []
    for draw in range(draws):
        rows = drawn_like_test(train_groups, test_groups, np.random.default_rng([seed, 77, draw]))
        per_group = M.generation_fidelity(test, train[rows].copy(), keys, floor=train, seed=seed)["per_group"]
        scored = per_group.index[per_group["floor_W1"].notna()]  # the groups the benchmark rows average
        runs.append({m: float(per_group.loc[scored, m].mean()) for m in ("W1", "MMD", "floor_W1", "floor_MMD")})
    mean = {m: float(np.mean([r[m] for r in runs])) for m in runs[0]}
    return {**mean, "W1_over_floor": mean["W1"] / mean["floor_W1"], "draws": runs}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--draws", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, HERE)
    from provenance import run_provenance

    out = {"meta": {"draws": args.draws, "provenance": run_provenance()}, "results": {}}
    for dataset in args.datasets:
        for seed in args.seeds:
            r = score(dataset, seed, args.draws)
            out["results"][f"{dataset}_s{seed}"] = r
            print(f"{dataset} seed {seed}: W1 / floor {r['W1_over_floor']:.3f} (W1 {r['W1']:.3f}, floor {r['floor_W1']:.3f}), "
                  f"MMD {r['MMD']:.4f} (floor {r['floor_MMD']:.4f})", flush=True)
    from pysave.io import atomic_output

    with atomic_output(os.path.join(HERE, "results", "size_matched_floor.json")) as tmp, open(tmp, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
