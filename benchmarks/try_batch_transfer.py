"""Batch transfer: which of transfer()'s paths ("flow", "shift", "decoder") best moves cells of
one batch into another, with the cell type kept?

The shift had been measured only for perturbation; these results (2026-12-03) made via="auto"
(the shift where it can be used, else the flow) transfer()'s default. A 50/50 split
stratified by (batch, cell type); a model (the harness's fast network, 60 epochs, today's
defaults, one torch thread) trained on the first half with both conditions. Each test cell of
batch A is moved to batch B under its own cell type, and compared, per (A -> B, cell type) with
>= MIN_CELLS test cells on both sides, with the test cells of (B, type):
- per-gene means, R^2 on all genes and on the top-100 DEGs of B against A (the perturbation
  protocol, pysave.metrics.perturbation_agreement; outputs "mean" and "input_plus_change");
- W1 and MMD in a 30-PC space fitted on all test cells (outputs "sample" and "input_plus_change").
Baselines: "none" (the cells left in batch A) and "floor" (the training cells of (B, type)).

With BATCH_ONLY=1 the model is given the batch alone (as the batch-correction harness trains it):
the shift then has one stratum, and the cell type is scored but not given.

Usage: [BATCH_ONLY=1] python benchmarks/try_batch_transfer.py DATASET SEED [MODEL_DIR]
       python benchmarks/try_batch_transfer.py --table      # the markdown table of every result
Writes results/batch_transfer/transfer_DATASET_sSEED[_batchonly].json."""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import eval_generation as EG  # noqa: E402
import run_benchmarks as RB  # noqa: E402

MIN_CELLS = 8
VIAS = ("decoder", "flow", "shift")


def main(dataset: str, seed: int, model_dir: str | None) -> None:
    import torch
    from pysave import metrics as M
    from pysave.io import atomic_output

    torch.set_num_threads(1)
    spec = RB.DATASETS[dataset]
    bk, lk = spec["batch_key"], spec["label_key"]
    adata = RB.load(dataset)
    train_mask, test_mask = EG.stratified_split(adata.obs, [bk, lk], seed, test_fraction=0.5)
    train, test = adata[train_mask].copy(), adata[test_mask].copy()
    batch_only = os.environ.get("BATCH_ONLY") == "1"
    suffix = "_batchonly" if batch_only else ""
    model, train_seconds = EG.trained_model(f"{dataset}_transfer50{suffix}", seed, int(os.environ.get("EPOCHS", 60)), EG.FAST,
                                            train, [bk] if batch_only else [bk, lk], bk, model_dir)
    RB.log(f"{dataset} seed {seed}: trained in {train_seconds:.0f} s")
    space = M.fit_reference_space(test, seed=seed)
    z_test = space.project(test)
    b_test, t_test = test.obs[bk].astype(str).to_numpy(), test.obs[lk].astype(str).to_numpy()
    b_train, t_train = train.obs[bk].astype(str).to_numpy(), train.obs[lk].astype(str).to_numpy()
    batches = sorted(set(b_test))
    rows = []
    for a in batches:
        src = test[b_test == a].copy()
        t_src = t_src_all = src.obs[lk].astype(str).to_numpy()
        for b in batches:
            if b == a:
                continue
            types = [t for t in sorted(set(t_src_all))
                     if (t_src == t).sum() >= MIN_CELLS and ((b_test == b) & (t_test == t)).sum() >= MIN_CELLS]
            if not types:
                continue
            moved = {}
            for via in VIAS:
                for output in ("mean", "sample", "input_plus_change"):
                    try:
                        moved[(via, output)] = model.transfer(src, {bk: b}, via=via, output=output, seed=seed)
                    except Exception as err:  # a path that refuses this pair is recorded, not fatal
                        RB.log(f"{a} -> {b} via {via} ({output}): {err}")
            for t in types:
                real_b = test[(b_test == b) & (t_test == t)]
                src_t = src[t_src == t]
                row = {"source": a, "target": b, "cell_type": t, "n_source": int(src_t.n_obs), "n_target": int(real_b.n_obs)}
                z_real = z_test[(b_test == b) & (t_test == t)]
                floor = train[(b_train == b) & (t_train == t)]
                cands = {"none": (src_t, src_t), "floor": (floor, floor)}
                for via in VIAS:
                    if (via, "mean") in moved:
                        cands[via] = (moved[(via, "mean")][t_src == t], moved[(via, "sample")][t_src == t])
                    if (via, "input_plus_change") in moved:
                        ipc = moved[(via, "input_plus_change")][t_src == t]
                        cands[f"{via}_plus"] = (ipc, ipc)
                # The DEGs of B against A (this type's real test cells) once per pair; every candidate
                # is then scored as perturbation_agreement scores it, on the same genes.
                degs = M.perturbation_agreement(src_t, real_b, floor)["degs"]
                genes = list(real_b.var_names)
                idx = [genes.index(g) for g in degs]
                real_means = M.log_normalized(real_b)
                for name, (for_means, for_cells) in cands.items():
                    if for_means.n_obs < 2:
                        continue
                    pred = M.log_normalized(for_means[:, genes])
                    z = space.project(for_cells)
                    row[name] = {"r2_degs": M.mean_agreement(real_means[:, idx], pred[:, idx])["r2"],
                                 "r2_all": M.mean_agreement(real_means, pred)["r2"],
                                 "W1": M.wasserstein(z_real, z, 1, seed=seed), "MMD": M.mmd_rbf(z_real, z, seed=seed)}
                rows.append(row)
                RB.log(f"{a} -> {b} {t}: " + ", ".join(f"{k} {v['r2_degs']:.3f}/{v['W1']:.2f}" for k, v in row.items() if isinstance(v, dict)))
    names = sorted({k for r in rows for k, v in r.items() if isinstance(v, dict)})
    summary = {n: {m: float(np.mean([r[n][m] for r in rows if n in r])) for m in ("r2_degs", "r2_all", "W1", "MMD")} for n in names}
    for n, s in summary.items():
        print(f"{dataset} s{seed} {n:14s} " + "  ".join(f"{m} {v:.3f}" for m, v in s.items()), flush=True)
    out = os.path.join(HERE, "results", "batch_transfer", f"transfer_{dataset}_s{seed}{suffix}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_output(out) as tmp, open(tmp, "w") as fh:
        json.dump({"dataset": dataset, "seed": seed, "conditions": [bk] if batch_only else [bk, lk], "train_seconds": train_seconds, "min_cells": MIN_CELLS,
                   "pairs": len(rows), "summary": summary, "rows": rows,
                   "protocol": "50/50 split by (batch, cell type); fast network, 60 epochs; test cells of A moved to B, "
                               "against the test cells of (B, type); means: output mean / input_plus_change; "
                               "W1, MMD: output sample / input_plus_change, 30 PCs of the test cells"}, fh, indent=1)


def table() -> str:
    """Markdown: per dataset (and conditions), each path's means over the pairs, averaged over the seeds."""
    import glob

    runs = {}
    for f in sorted(glob.glob(os.path.join(HERE, "results", "batch_transfer", "transfer_*.json"))):
        with open(f) as fh:
            r = json.load(fh)
        name = r["dataset"] + ("" if len(r.get("conditions", [0, 0])) == 2 else ", batch only")
        runs.setdefault(name, []).append(r)
    order = ["none", "decoder", "flow", "shift", "decoder_plus", "flow_plus", "shift_plus", "floor"]
    lines = ["| data (seeds, pairs per seed) | path | R^2 top-100 DEGs | R^2 all genes | W1 | MMD |", "|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        for path in order:
            vals = [r["summary"][path] for r in rs if path in r["summary"]]
            if not vals:
                continue
            cell = [f"{np.mean([v[m] for v in vals]):.3f}" for m in ("r2_degs", "r2_all", "W1", "MMD")]
            label = f"{name} ({','.join(str(r['seed']) for r in rs)}; {'/'.join(str(r['pairs']) for r in rs)})"
            lines.append(f"| {label} | {path} | " + " | ".join(cell) + " |")
    lines += ["", "| data | shift ahead of flow, pairs (all seeds): R^2 DEGs | R^2 all | W1 (lower) | MMD (lower) |", "|---|---|---|---|---|"]
    for name, rs in runs.items():
        pairs = [row for r in rs for row in r["rows"] if "shift" in row and "flow" in row]
        wins = [sum((row["shift"][m] > row["flow"][m]) == (m.startswith("r2")) for row in pairs) for m in ("r2_degs", "r2_all", "W1", "MMD")]
        lines.append(f"| {name} | " + " | ".join(f"{w} of {len(pairs)}" for w in wins) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        print(table())
    else:
        main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
