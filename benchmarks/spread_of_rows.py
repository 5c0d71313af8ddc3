"""How spread out are generated cells? The spread of the generation rows that carry it
(benchmark diagnostic, not a test; no model is trained)

    .venv/bin/python benchmarks/spread_of_rows.py [--pattern '*_v3_s*']

For each generation result file whose per-group rows carry ``spread`` (protocol version 3), the
mean over the groups with at least pysave.metrics.MIN_SPREAD_CELLS cells on every side of the
generated cells' spread (total variance in the protocol's 30-PC space over the test cells'), the
noise floor's (the training cells') and, recomputed on the same split, the per-group Gaussian's;
each over the floor's. Rows written before the minimum existed averaged every group; this
reads their per-group rows again. Writes results/spread_generation.json and prints a table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

import eval_generation
import run_benchmarks as RB  # beside this script


def main() -> None:
    from pysave import metrics as M

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pattern", default="*_v3_s*", help="glob of bench_generation_<pattern>.json files")
    args = p.parse_args()
    rows, gaussians = [], {}
    for path in sorted(glob.glob(os.path.join(RB.RESULTS, f"bench_generation_{args.pattern}.json"))):
        r = json.load(open(path))
        groups = r["per_group"]["sample"]
        if "spread" not in groups[0]:
            continue
        big = [g for g in groups if min(g["n_real"], g["n_generated"], g.get("n_floor", 0)) >= M.MIN_SPREAD_CELLS]
        key = (r["dataset"], r["seed"])
        if key not in gaussians:  # the Gaussian is drawn from the split alone
            train, test, keys, _ = eval_generation.split(r["dataset"], r["seed"])
            gaussians[key] = eval_generation.gaussian_baseline(train, test, keys, r["seed"])
        gauss = gaussians[key]
        spread, floor = np.mean([g["spread"] for g in big]), np.mean([g["floor_spread"] for g in big])
        gauss_spread = float(gauss.loc[[g["group"] for g in big], "spread"].mean())
        rows.append({"dataset": r["dataset"], "method": r["method"], "seed": r["seed"], "groups": len(big),
                     "W1_over_floor": r["metrics"]["sample_W1"] / r["metrics"]["floor_W1"], "spread": float(spread),
                     "floor_spread": float(floor), "gaussian_spread": gauss_spread, "spread_over_floor": float(spread / floor),
                     "gaussian_spread_over_floor": gauss_spread / float(floor)})
        print(rows[-1], flush=True)
    if not rows:
        raise SystemExit(f"no generation result matching {args.pattern!r} carries per-group spreads")
    RB.write_row_summary("spread_generation", rows, ("dataset", "method", "seed", "groups"), pattern=args.pattern,
                         min_cells=M.MIN_SPREAD_CELLS)
    print("\n| dataset | method | seeds | W1 / floor | spread / floor's | Gaussian's spread / floor's |\n|---|---|---|---|---|---|")
    for d, m in sorted({(r["dataset"], r["method"]) for r in rows}):
        rs = [r for r in rows if (r["dataset"], r["method"]) == (d, m)]
        cells = ["; ".join(f"{r[k]:.2f}" for r in rs) + (f" (mean {np.mean([r[k] for r in rs]):.2f})" if len(rs) > 1 else "")
                 for k in ("W1_over_floor", "spread_over_floor", "gaussian_spread_over_floor")]
        print(f"| {d} | {m} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
