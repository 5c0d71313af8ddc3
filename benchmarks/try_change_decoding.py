"""Which decoding carries the predicted change? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_change_decoding.py --dataset kang_muscat --seeds 0 1 --model-dir /tmp/kres

``transfer(via="shift", output="input_plus_change")`` predicts a held-out type's stimulated cells as
each control cell's own log1p(CP10k) plus a change, clipped at 0. The change can be decoded four
ways from the same encoder mean ``mu`` and latent shift ``delta``:
- ``both`` (the product): decode(mu + delta, stimulated) - decode(mu, control);
- ``latent``: decode(mu + delta, control) - decode(mu, control): scGen's arithmetic, the label kept;
- ``label``: decode(mu, stimulated) - decode(mu, control): the label alone (via="decoder");
- ``masked``: decode(mu + delta, [MASK]) - decode(mu, [MASK]): the latent alone, the condition masked.
Reuses the harness's kept held-out models (fast network, VAE masking 0.6, 60 epochs; trained when
missing) and scores each with the perturbation protocol. kang_muscat is the development set; Kang
is scored only with what kang_muscat chose. Writes results/change_decoding_<dataset>.json.
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

VARIANTS = ("both", "latent", "label", "masked")


def main():
    import anndata as ad
    import torch

    import eval_generation
    import run_benchmarks as RB
    from pysave import metrics as M
    from pysave.model import SHIFT_BANDWIDTH

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="kang_muscat")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--types", nargs="*")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--model-dir")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adata, ck, tk, ctrl, stim, cond, types = RB.perturbation_data(args.dataset)
    params = {**RB.FAST, "vae_mask_prob": 0.6}
    rows = []
    for seed in args.seeds:
        for t in args.types or sorted(set(types)):
            held = RB.held_out_cells(adata, args.dataset, t)
            model, _ = eval_generation.trained_model(args.dataset, seed, 60, params, adata[~held].copy(), [ck, tk], None,
                                                     args.model_dir, {"flow_epochs": 1}, held_out=t)
            query = adata[(types == t) & (cond == ctrl)].copy()
            real = adata[types == t].copy()
            prep = model._prepare(query, keep_counts=True)
            mu, _ = model._encode(prep)
            j = model.registry["condition_keys"].index(ck)
            source = prep.codes
            target = source.copy()
            target[:, j] = model._code_of(ck, stim)
            masked = source.copy()
            masked[:, j] = model.vae.condition_embedding.mask_codes[j]
            moved, _ = model._shifted(mu, source, target, [j], SHIFT_BANDWIDTH, "")
            home = model._decode(mu, source)
            change = {"both": lambda: model._decode(moved, target) - home,
                      "latent": lambda: model._decode(moved, source) - home,
                      "label": lambda: model._decode(mu, target) - home,
                      "masked": lambda: model._decode(moved, masked) - model._decode(mu, masked)}
            own = M.log_normalized(query[:, model.genes])
            row = {"seed": seed, "type": t}
            for name in args.variants:
                pred = ad.AnnData(np.maximum(own + change[name](), 0).astype(np.float32), obs=query.obs.copy(),
                                  var=query[:, model.genes].var.copy())
                pred.obs[ck] = stim
                s = M.perturbation_evaluation(real[:, model.genes], pred, ck, ctrl, stim, tk, n_degs=100, seed=seed)
                s = s["per_group"].iloc[0]
                row.update({f"{name}_degs_r2": float(s["degs_r2"]), f"{name}_all_r2": float(s["all_r2"])})
            rows.append(row)
            print(json.dumps(row), flush=True)
    RB.write_row_summary(f"change_decoding_{args.dataset}", rows, ("seed", "type"), dataset=args.dataset, seeds=args.seeds,
                         params=params)


if __name__ == "__main__":
    main()
