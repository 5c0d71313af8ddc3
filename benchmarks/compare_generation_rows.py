"""Two generation rows of the harness side by side, seed by seed (benchmark diagnostic, not a test;
no model is trained)

    .venv/bin/python benchmarks/compare_generation_rows.py --rows pysave_paper_spread pysave_spread \
        [--dataset pbmc_3tech scvelo_pancreas] [--name paper_network_generation]

For each dataset, the seeds both rows were run on: W1 / floor, MMD minus the same split's
per-group Gaussian's (each row file scores the Gaussian on its own split, so the difference is
paired), the generated spread over the floor's, and the training and sampling rates; then the
mean over those seeds; and, pooled over every (dataset, seed) pair, the first row minus the
second with its standard error and paired tests. A row can be named per dataset: ``pysave_spread,baron_human=pysave_product_spread``.
Reads and writes the harness's results folder (results/, or $PYSAVE_BENCH_RESULTS): <name>.json,
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

import run_benchmarks as RB
from provenance import run_provenance
from readme_table import write_block

DATASETS = ("pbmc_3tech", "baron_human", "scvelo_pancreas", "pbmc4k")


def row_name(spec: str, dataset: str) -> str | None:
    """The row ``spec`` names for ``dataset``: a comma-separated list of ``row`` (every dataset) and
    ``dataset=row`` (that one, which wins); None where it names none."""
    plain = None
    for item in spec.split(","):
        if "=" in item:
            ds, row = item.split("=", 1)
            if ds == dataset:
                return row
        else:
            plain = item
    return plain


def seeds_of(dataset: str, row: str) -> dict[int, dict]:
    """{seed: result} of one row, from the harness's results folder. The glob also matches longer
    row names (``pysave_s*`` matches ``pysave_spread_s0``); each file's own method keeps the row."""
    out = {}
    for path in glob.glob(os.path.join(RB.RESULTS, f"bench_generation_{dataset}_{row}_s*.json")):
        with open(path) as fh:
            result = json.load(fh)
        if result["method"] == row:
            out[int(result["seed"])] = result
    return out


def summary(result: dict) -> dict:
    m = result["metrics"]
    return {"W1_over_floor": m["sample_W1_over_floor"], "MMD": m["sample_MMD"],
            "MMD_minus_gaussian": m["sample_MMD"] - m["gaussian_MMD"],
            "spread_over_floor": m.get("sample_spread_over_floor"),
            "gaussian_W1_over_floor": m["gaussian_W1_over_floor"],
            "train_cells_per_s": result.get("train_cells_per_s"), "sampling_cells_per_s": result.get("sampling_cells_per_s"),
            "commit": result.get("provenance", {}).get("commit"), "pysave_config": result.get("pysave_config")}


def compare(datasets, rows) -> list[dict]:
    out = []
    for ds in datasets:
        names = [row_name(spec, ds) for spec in rows]
        if None in names:
            continue
        found = [seeds_of(ds, name) for name in names]
        seeds = sorted(set.intersection(*(set(f) for f in found)))
        if not seeds:
            continue
        per_seed = {s: {name: summary(f[s]) for name, f in zip(names, found)} for s in seeds}
        means = {name: {k: float(np.mean([per_seed[s][name][k] for s in seeds]))
                        for k in ("W1_over_floor", "MMD", "MMD_minus_gaussian", "gaussian_W1_over_floor")}
                 for name in names}
        out.append({"dataset": ds, "rows": names, "seeds": seeds, "per_seed": per_seed, "mean": means})
    return out


def pooled(comparisons) -> dict | None:
    """The first row minus the second over every (dataset, seed) pair of ``comparisons``: mean
    difference, its standard error, on how many pairs the first is higher (worse), and the paired
    t-test's and Wilcoxon signed-rank test's two-sided p (scipy). None with fewer than 3 pairs."""
    from scipy import stats

    diffs = {k: [] for k in ("W1_over_floor", "MMD_minus_gaussian")}
    for c in comparisons:
        a, b = c["rows"]
        for s in c["seeds"]:
            for k in diffs:
                diffs[k].append(c["per_seed"][s][a][k] - c["per_seed"][s][b][k])
    n = len(diffs["MMD_minus_gaussian"])
    if n < 3:
        return None
    return {"pairs": n, **{k: {"mean": float(np.mean(d)), "se": float(np.std(d, ddof=1) / np.sqrt(n)),
                              "first_higher": int(np.sum(np.asarray(d) > 0)),
                              "t_test_p": float(stats.ttest_1samp(d, 0.0).pvalue),
                              "wilcoxon_p": float(stats.wilcoxon(d).pvalue)} for k, d in diffs.items()}}


def pooled_line(comparisons, pool: dict) -> str:
    names = [list(dict.fromkeys(c["rows"][i] for c in comparisons)) for i in (0, 1)]  # in the datasets' order
    parts = [f"{label} {pool[k]['mean']:+.4f} (SE {pool[k]['se']:.4f}; higher on {pool[k]['first_higher']} of {pool['pairs']}; "
             f"paired t-test p = {pool[k]['t_test_p']:.3f}, Wilcoxon p = {pool[k]['wilcoxon_p']:.3f})"
             for label, k in (("W1 / floor", "W1_over_floor"), ("MMD minus the Gaussian's", "MMD_minus_gaussian"))]
    return (f"**Over all {pool['pairs']} (dataset, seed) pairs**, {' / '.join(f'`{n}`' for n in names[0])} minus "
            f"{' / '.join(f'`{n}`' for n in names[1])}: " + "; ".join(parts) + ".")


def _spread(row: dict) -> str:
    return "-" if row["spread_over_floor"] is None else f"{row['spread_over_floor']:.2f}"


def table(comparisons) -> str:
    lines = []
    for c in comparisons:
        a, b = c["rows"]
        lines += [f"**{c['dataset']}** (`{a}` against `{b}`; seeds {', '.join(map(str, c['seeds']))}):", "",
                  f"| seed | `{a}`: W1 / floor, MMD - Gaussian's, spread | `{b}`: the same | Gaussian W1 / floor |",
                  "|---|---|---|---|"]
        for s in c["seeds"]:
            x, y = c["per_seed"][s][a], c["per_seed"][s][b]
            lines.append(f"| {s} | {x['W1_over_floor']:.3f}x, {x['MMD_minus_gaussian']:+.4f}, {_spread(x)} | "
                         f"{y['W1_over_floor']:.3f}x, {y['MMD_minus_gaussian']:+.4f}, {_spread(y)} | {x['gaussian_W1_over_floor']:.3f}x |")
        ma, mb = c["mean"][a], c["mean"][b]
        lines += [f"| mean | **{ma['W1_over_floor']:.3f}x, {ma['MMD_minus_gaussian']:+.4f}** | "
                  f"{mb['W1_over_floor']:.3f}x, {mb['MMD_minus_gaussian']:+.4f} | {ma['gaussian_W1_over_floor']:.3f}x |", ""]
    return "\n".join(lines).rstrip()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs=2, required=True, help="two rows (method names of the result files), each as row[,dataset=row...]")
    p.add_argument("--dataset", nargs="+", default=list(DATASETS))
    p.add_argument("--name", default=None, help="results/<name>.json and the README block <name>-table (default: print only)")
    args = p.parse_args()
    comparisons = compare(args.dataset, args.rows)
    if not comparisons:
        raise SystemExit(f"no seed has both rows {args.rows} in {RB.RESULTS}")
    pool = pooled(comparisons)
    text = table(comparisons) + ("" if pool is None else "\n\n" + pooled_line(comparisons, pool))
    print(text)
    if args.name:
        from pysave.io import atomic_output

        with atomic_output(os.path.join(RB.RESULTS, f"{args.name}.json")) as tmp, open(tmp, "w") as fh:
            json.dump({"rows": args.rows, "comparisons": comparisons, "pooled": pool, "provenance": run_provenance()},
                      fh, indent=1)
        write_block(f"{args.name}-table", text)


if __name__ == "__main__":
    main()
