"""Where does a generation gap come from: the flow, or the VAE? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/decompose_generation.py --model-dir DIR [DIR ...] --dataset pbmc_3tech --seed 0

Takes models saved by ``run_benchmarks.py --model-dir`` (trained on the 80/20 split of
``eval_generation.split``) and scores, against the same held-out cells and with the same protocol,
three sets of sampled cells (output="sample") for the test cells' conditions:
- ``flow``: the model's generation (latents from the flow, w = 1, the default ODE solver and steps);
- ``product``: the model's generation at every default of ``generate`` (w = 2, calibrated): what
  the benchmark rows score;
- ``posterior``: a perfect flow. Latents drawn from the aggregate posterior of the *training*
  cells of the same condition combination (a random training cell's mu + sigma * eps), decoded.
  What is left of the gap here is the VAE's (decoder and the posterior's spread);
- ``posterior_mean``: the same training cells' encoder means, decoded (no sigma * eps): what a
  perfect flow trained on the means instead of posterior samples would give;
- ``reconstruction``: the held-out cells themselves, encoded and decoded (the encoder mean).
  The VAE's reconstruction of unseen cells; no sampling of latents at all.
flow minus posterior is the flow's share of the gap; posterior minus the floor the VAE's.
A last set, ``at_training_size``, generates as many cells per group as the floor has (the
training cells), with the Gaussian baseline at the same size, at guidance ``--guidance``
(default 2, the product's), to show how much of the W1 ratio is the floor's larger sample.
(The other way round, the floor drawn at the generated size, is ``metrics``' ``floor_sized_*``.)
Writes results/decompose_<dataset>_s<seed>.json (one entry per model directory).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def decompose(model_dir: str, dataset: str, seed: int, guidance: float = 2.0) -> dict:
    import torch

    sys.path.insert(0, HERE)
    import eval_generation

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    sets = {"flow": model.generate_like(test.obs[keys], seed=seed, output="sample", guidance=1.0),
            "product": model.generate_like(test.obs[keys], seed=seed, output="sample")}

    # a perfect flow: latents from the training cells' aggregate posterior, per combination
    prep_train = model._prepare(train)
    mu, logvar = model._encode(prep_train)
    prep_test = model._prepare(test)
    rng = np.random.default_rng(seed)
    train_groups, test_groups = eval_generation.groups(train, keys), eval_generation.groups(test, keys)
    pick = np.array([rng.choice(np.flatnonzero(train_groups == g)) if (train_groups == g).any() else -1
                     for g in test_groups])
    keep = pick >= 0
    eps = torch.from_numpy(rng.standard_normal((int(keep.sum()), mu.shape[1])).astype(np.float32))
    z = mu[pick[keep]] + torch.exp(0.5 * logvar[pick[keep]]) * eps
    codes = prep_test.codes[keep]
    x = model._output_sampler("sample", seed)(model._decode(z, codes), codes)
    sets["posterior"] = _like(test[keep], x)
    # the same training cells' encoder means, no posterior noise (a perfect flow over the means)
    x = model._output_sampler("sample", seed)(model._decode(mu[pick[keep]], codes), codes)
    sets["posterior_mean"] = _like(test[keep], x)

    # reconstruction of the held-out cells (encoder mean, their own conditions)
    mu_test, _ = model._encode(prep_test)
    x = model._output_sampler("sample", seed + 1)(model._decode(mu_test, prep_test.codes), prep_test.codes)
    sets["reconstruction"] = _like(test, x)

    summary = eval_generation.score(train, test, keys, seed, sets)
    out = {"model_dir": model_dir, "params": model.params, "floor": summary["noise_floor"],
           "gaussian": summary["gaussian_pca"], "groups": summary["groups"]}
    for name, r in summary["outputs"].items():
        out[name] = r["pysave"]
    out["at_training_size"] = at_training_size(model, train, test, keys, seed, guidance)
    return out


def at_training_size(model, train, test, keys, seed, guidance) -> dict:
    """The protocol's floor compares the test cells with *all* training cells of a group (about 4x
    as many as a generated set of the test's size), and W1 falls with the number of points. Here
    pysave and the Gaussian make as many cells per group as the floor has, so all three are
    compared at equal size (the floor itself is unchanged)."""
    from pysave import metrics as M

    import eval_generation

    gen = model.generate_like(train.obs[keys], seed=seed, output="sample", guidance=guidance)
    scored = M.generation_fidelity(test, gen, keys, floor=train, seed=seed)["per_group"]
    gauss = eval_generation.gaussian_baseline(train, test, keys, seed, size="train")
    common = scored.index[scored["floor_W1"].notna()].intersection(gauss.index)
    return {"guidance": guidance, "groups": int(len(common)),
            "floor": {m: float(scored.loc[common, f"floor_{m}"].mean()) for m in ("W1", "MMD")},
            "pysave": {m: float(scored.loc[common, m].mean()) for m in ("W1", "MMD")},
            "gaussian": {m: float(gauss.loc[common, m].mean()) for m in ("W1", "MMD")}}


def _like(real, X):
    import anndata as ad

    return ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=real.obs.copy(), var=real.var[[]].copy(),
                      uns={"pysave": {"X": "log1p(CP10k)", "output": "sample"}})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", nargs="+", required=True)
    p.add_argument("--dataset", default="pbmc_3tech")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=2.0, help="w of the floor-sized generation")
    args = p.parse_args()
    rows = [decompose(d, args.dataset, args.seed, args.guidance) for d in args.model_dir]
    path = os.path.join(HERE, "results", f"decompose_{args.dataset}_s{args.seed}.json")
    with open(path, "w") as fh:
        json.dump(rows, fh, indent=1, default=float)
    for r in rows:
        print(os.path.basename(r["model_dir"]), f"floor W1 {r['floor']['W1']:.3f} MMD {r['floor']['MMD']:.3f} | "
              f"gaussian {r['gaussian']['W1']:.3f} {r['gaussian']['MMD']:.3f} | " + " | ".join(
                  f"{k} {r[k]['W1']:.3f} {r[k]['MMD']:.3f}" for k in ("flow", "product", "posterior", "posterior_mean", "reconstruction")))
        f = r["at_training_size"]
        print(f"  sets at the training size (w = {f['guidance']:g}): floor W1 {f['floor']['W1']:.3f} MMD {f['floor']['MMD']:.3f} | "
              f"pysave {f['pysave']['W1']:.3f} {f['pysave']['MMD']:.3f} | gaussian {f['gaussian']['W1']:.3f} {f['gaussian']['MMD']:.3f}")


if __name__ == "__main__":
    main()
