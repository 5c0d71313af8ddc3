"""Other ways of moving a latent through the flow for perturbation (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_transfer_variants.py --model-dir DIR --seed 0 --types CD4T B \\
        --variants default extra_changed:wd=0.5 default:tau=0.5

Takes the held-out-type Kang models kept by ``run_benchmarks.py --task perturbation --model-dir
DIR`` and scores, like the perturbation task (R^2 of per-gene means, top-100 DEGs and all genes,
decoder-mean output), variants of ``SAVE.transfer(via="flow")``. A variant is a name with
``:key=value`` options: ``w`` (guidance forward, default 2), ``wb`` (guidance back, default w),
``n`` (steps each way, default 50), ``s=mid`` (midpoint instead of Euler), ``tau`` (go back only
to t = tau instead of the noise), ``wd`` (weight of the extra term), ``post=1`` (move one posterior sample per cell, mu + sigma eps,
which is what the flow was trained on, instead of the encoder mean mu). Names:
- ``default``: what ``transfer`` does: back under the cells' conditions, forward under the target's,
  each with v = (1 - w) v(nothing) + w v(all conditions);
- ``changed_only``: forward guidance on the changed condition alone: v(type) + w (v(type, stimulated) - v(type));
- ``extra_changed``: the default plus wd (v(stimulated) - v(nothing)) (composable guidance);
- ``extra_shift``: the default plus wd (v(stimulated) - v(control)), the other conditions masked;
- ``decoder``: no flow (``via="decoder"``).
Writes results/transfer_variants_s<seed>.json (``_e<epochs>`` added for models other than the 60-epoch
ones; ``pool<seeds>`` instead of ``s<seed>`` with ``--pool-seeds``, which pools the predicted cells of
several seeds' models: an ensemble).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _solve(velocity, x, t0, t1, n, midpoint):
    import torch

    dt = (t1 - t0) / n
    for i in range(n):
        t = torch.full((x.shape[0],), t0 + i * dt)
        k = velocity(t, x)
        x = x + dt * (velocity(t + dt / 2, x + dt / 2 * k) if midpoint else k)
    return x


def _combination(field, terms):
    """v(x, t) = sum of weight * v(x, t, codes) over (weight, codes) terms, in one batched pass
    (``pysave.flow.guided_velocity`` is the two-term case)."""
    import torch

    def velocity(t, x):
        n = len(terms)
        out = field(torch.cat([x] * n), torch.cat([t] * n), torch.cat([c for _, c in terms])).chunk(n)
        return sum(a * o for (a, _), o in zip(terms, out))

    return velocity


def transfer(model, query, variant, condition_key, stimulated, cell_type_key):
    import torch

    from pysave.flow import guided_velocity

    name, *options = variant.split(":")
    opts = dict(o.split("=") for o in options)
    w = float(opts.get("w", 2)); wb = float(opts.get("wb", w)); wd = float(opts.get("wd", 1))
    n = int(opts.get("n", 50)); tau = float(opts.get("tau", 0)); midpoint = opts.get("s") == "mid"
    prep = model._prepare(query)
    mu, logvar = model._encode(prep)
    if opts.get("post") == "1":
        gen = torch.Generator().manual_seed(0)
        mu = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
    keys = model.registry["condition_keys"]
    ic, it = keys.index(condition_key), keys.index(cell_type_key)
    src = torch.from_numpy(prep.codes.copy())
    tgt = src.clone()
    tgt[:, ic] = model._code_of(condition_key, stimulated)
    field = model.flow.eval()
    mask = field.condition_embedding.all_masked(1, "cpu")[0]

    def codes(condition, keep_type):
        c = src.clone()
        c[:, ic] = {"stim": tgt[0, ic], "ctrl": src[0, ic], "mask": mask[ic]}[condition]
        if not keep_type:
            c[:, it] = mask[it]
        return c

    extra = {"extra_changed": [(wd, codes("stim", False)), (-wd, codes("mask", False))],
             "extra_shift": [(wd, codes("stim", False)), (-wd, codes("ctrl", False))]}
    with torch.no_grad():
        if name == "decoder":
            z = mu
        else:
            if name == "default":
                forward = guided_velocity(field, tgt, w)
            elif name == "changed_only":
                forward = _combination(field, [(1 - w, codes("mask", True)), (w, tgt)])
            elif name in extra:
                forward = _combination(field, [(1 - w, codes("mask", False)), (w, tgt)] + extra[name])
            else:
                raise SystemExit(f"unknown variant {name}")
            x = (mu - model.latent_mean) / model.latent_std
            steps = max(1, int(round(n * (1 - tau))))
            x = _solve(guided_velocity(field, src, wb), x, 1.0, tau, steps, midpoint)
            x = _solve(forward, x, tau, 1.0, steps, midpoint)
            z = x * model.latent_std + model.latent_mean
    out = query.copy()
    out.X = model._decode(z, tgt.numpy())
    out.obs[condition_key] = stimulated
    out.uns["pysave"] = {"X": "log1p(CP10k)", "output": "mean"}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60, help="which kept models (their VAE epochs)")
    p.add_argument("--types", nargs="+", required=True)
    p.add_argument("--variants", nargs="+", default=["default", "extra_changed:wd=0.5"])
    p.add_argument("--pool-seeds", nargs="+", type=int, default=None,
                   help="pool the predicted cells of the kept models of these seeds (an ensemble: per-gene means averaged)")
    args = p.parse_args()
    seeds = args.pool_seeds or [args.seed]
    import anndata as ad
    import torch

    import pysave
    from pysave import metrics as M
    sys.path.insert(0, HERE)
    import run_benchmarks as RB

    torch.set_num_threads(1)
    adata, ck, tk, ctrl, stim, cond, types = RB.perturbation_data("kang")
    rows = []
    for t in args.types:
        safe = re.sub(r"[^A-Za-z0-9.+-]", "-", t)
        models = []
        for seed in seeds:
            found = glob.glob(os.path.join(args.model_dir, f"kang_heldout_{safe}_s{seed}_e{args.epochs}_*"))
            if not found:
                raise SystemExit(f"no kept model for {t} (seed {seed}, {args.epochs} epochs) in {args.model_dir}")
            models.append(pysave.SAVE.load(sorted(found)[0], verbose=False, device="cpu"))
        real, query = adata[types == t].copy(), adata[(types == t) & (cond == ctrl)].copy()
        for v in args.variants:
            preds = [transfer(model, query, v, ck, stim, tk) for model in models]
            pred = preds[0] if len(preds) == 1 else ad.concat(preds, index_unique="-", uns_merge="first")
            row = M.perturbation_evaluation(real, pred, ck, ctrl, stim, tk, n_degs=100, seed=args.seed)["per_group"].iloc[0]
            rows.append({"type": t, "variant": v, "degs_r2": float(row["degs_r2"]), "all_r2": float(row["all_r2"])})
            print(f"{t} {v}: R2 DEGs {row['degs_r2']:.4f}, all {row['all_r2']:.4f}", flush=True)
    suffix = ("" if args.epochs == 60 else f"_e{args.epochs}")
    name = f"pool{''.join(map(str, seeds))}" if args.pool_seeds else f"s{args.seed}"
    with open(os.path.join(HERE, "results", f"transfer_variants_{name}{suffix}.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    for v in args.variants:
        r = [x for x in rows if x["variant"] == v]
        print(f"mean over {len(r)} types, {v}: {np.mean([x['degs_r2'] for x in r]):.4f} / {np.mean([x['all_r2'] for x in r]):.4f}")


if __name__ == "__main__":
    main()
