"""A perfect generator at the generated set's size (benchmark diagnostic, not a test).

    .venv/bin/python benchmarks/size_matched_floor.py [--datasets pbmc_3tech ...] [--seeds 0 1]

The protocol's noise floor compares the held-out cells of a group with *all* its training cells,
about 4x as many as a generated set (which has the test set's size), and W1 falls with the number
of points. ``metrics.generation_fidelity`` also scores the floor cells drawn at the generated
set's size (``floor_sized_*``, mean of ``metrics.FLOOR_SIZED_DRAWS`` draws per group, as ``pysave
evaluate`` reports it): here on the benchmarks' splits, with the test cells' group sizes. That is
what a generator that reproduced the training cells would score: the reachable W1 / floor and MMD
on the same splits. Writes results/size_matched_floor.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATASETS = ["pbmc_3tech", "baron_human", "scvelo_pancreas", "pbmc4k"]


def score(dataset: str, seed: int) -> dict:
    """``metrics.generation_fidelity``'s size-matched floor on a benchmark split: the test cells
    stand in for a generated set (their group sizes are a generated set's), the training cells
    are the floor, and ``floor_sized_*`` is what the training cells score drawn at those sizes."""
    from pysave import metrics as M

    sys.path.insert(0, HERE)
    import eval_generation

    train, test, keys, _ = eval_generation.split(dataset, seed)
    result = M.generation_fidelity(test, test, keys, floor=train, seed=seed)
    per_group = result["per_group"]
    scored = per_group.index[per_group["floor_W1"].notna()]  # the groups the benchmark rows average
    out = {m: float(per_group.loc[scored, m].mean()) for m in ("floor_sized_W1", "floor_sized_MMD", "floor_W1", "floor_MMD")}
    return {**out, "W1_over_floor": out["floor_sized_W1"] / out["floor_W1"], "draws": M.FLOOR_SIZED_DRAWS,
            "groups": int(len(scored))}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = p.parse_args()
    sys.path.insert(0, HERE)
    from provenance import run_provenance

    out = {"meta": {"provenance": run_provenance()}, "results": {}}
    for dataset in args.datasets:
        for seed in args.seeds:
            r = score(dataset, seed)
            out["results"][f"{dataset}_s{seed}"] = r
            print(f"{dataset} seed {seed}: W1 / floor {r['W1_over_floor']:.3f} (W1 {r['floor_sized_W1']:.3f}, floor "
                  f"{r['floor_W1']:.3f}), MMD {r['floor_sized_MMD']:.4f} (floor {r['floor_MMD']:.4f})", flush=True)
    from pysave.io import atomic_output

    with atomic_output(os.path.join(HERE, "results", "size_matched_floor.json")) as tmp, open(tmp, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
