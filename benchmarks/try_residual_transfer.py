"""Transfer as a change added to the real cells (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_residual_transfer.py --seed 0 [--types CD4T B] [--model-dir DIR]

For each Kang cell type held out (its stimulated cells left out of training, as in the
perturbation and unseen tasks), trains the fast network with VAE masking 0.6 (flow 1 epoch: the
shift uses only the VAE) and compares two predictions of the type's stimulated cells:
- ``shift``: ``transfer(via="shift")``, the decoder mean under the target (what the harness scores);
- ``residual``: the same shift with ``output="input_plus_change"`` (the product's; this script
  prototyped it): the real control cells' log-normalized expression plus the decoded change,
  decode(mu + shift, stimulated) - decode(mu, control), clipped at 0: the VAE's reconstruction
  error cancels, and each cell keeps its own noise.
Scores them with the perturbation protocol (R^2 of per-gene means, top-100 DEGs and all genes) and
the unseen protocol (W1 / floor, MMD, per-gene-mean r2 against half of the held-out cells; the
shift scored as sampled counts there, as the harness does). Writes results/residual_transfer_s<seed>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))


def main():
    import torch

    import eval_generation
    import run_benchmarks as RB
    from pysave import metrics as M

    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--types", nargs="*")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--model-dir")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adata, ck, tk, ctrl, stim, cond, types = RB.perturbation_data("kang")
    params = {**RB.FAST, "vae_mask_prob": 0.6}
    rows = []
    for t in args.types or sorted(set(types)):
        held = RB.held_out_cells(adata, "kang", t)
        train = adata[~held].copy()
        model, seconds = eval_generation.trained_model("kang", args.seed, args.epochs, params, train, [ck, tk], None, args.model_dir,
                                                       {"flow_epochs": 1}, held_out=t)
        row = {"type": t, "train_seconds": seconds}
        # Perturbation protocol: all the type's control cells, decoder means.
        query = adata[(types == t) & (cond == ctrl)].copy()
        real = adata[types == t].copy()
        shifted = model.transfer(query, {ck: stim}, via="shift", seed=args.seed)
        recon = model.transfer(query, {ck: ctrl}, via="decoder", seed=args.seed)
        preds = {"shift": shifted, "residual": model.transfer(query, {ck: stim}, via="shift", output="input_plus_change")}
        r = np.corrcoef(M.log_normalized(query).mean(0), np.asarray(recon.X).mean(0))[0, 1]
        row["reconstruction_all_r2"] = float(r * r)  # per-gene means, decoded vs real control cells
        for name, pred in preds.items():
            s = M.perturbation_evaluation(real, pred, ck, ctrl, stim, tk, n_degs=100, seed=args.seed)["per_group"].iloc[0]
            row.update({f"pert_{name}_degs_r2": float(s["degs_r2"]), f"pert_{name}_all_r2": float(s["all_r2"])})
        # Unseen protocol: |B| control cells against half A of the held-out cells.
        order = np.random.default_rng(args.seed).permutation(np.flatnonzero(held))
        reference, floor = adata[order[: len(order) // 2]].copy(), adata[order[len(order) // 2:]].copy()
        control = adata[(types == t) & (cond == ctrl)]
        pick = np.random.default_rng(args.seed).choice(control.n_obs, floor.n_obs, replace=control.n_obs < floor.n_obs)
        q = control[pick].copy()
        q.obs_names_make_unique()
        gen = {"shift_sample": model.transfer(q, {ck: stim}, via="shift", output="sample", seed=args.seed),
               "residual": model.transfer(q, {ck: stim}, via="shift", output="input_plus_change")}
        for name, g in gen.items():
            g.obs[ck], g.obs[tk] = stim, t
            s = M.generation_fidelity(reference, g, [ck, tk], floor=floor, seed=args.seed)["per_group"].iloc[0]
            row.update({f"unseen_{name}_W1_over_floor": float(s["W1"] / s["floor_W1"]), f"unseen_{name}_MMD": float(s["MMD"]),
                        f"unseen_{name}_mean_r2": float(s["mean_r2"]), "unseen_floor_mean_r2": float(s["floor_mean_r2"])})
        rows.append(row)
        print(json.dumps(row), flush=True)
    RB.write_row_summary(f"residual_transfer_s{args.seed}", rows, ("type",), seed=args.seed, params=params,
                         epochs=args.epochs)


if __name__ == "__main__":
    main()
