"""Is the generation gap in the groups' centres or in their spread, and can the sampler widen it?
(benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_sampling_spread.py --model-dir DIR --dataset pbmc_3tech --seed 0

Generated groups have about half the real within-group variance (benchmarks/README.md). Part 1
corrects the product's generated cells (w = 2, 10 midpoint steps, sampled output) in the
scoring PC space with oracle knowledge of each group's training cells: the group mean moved onto
the training mean ("shift"), the spread scaled to the training cells' total variance ("scale"),
or both, next to the per-group Gaussian. The oracles are not something pysave could do for an
unseen combination; they say which correction would pay. Part 2 tries two sampler-side ways to
widen the spread, the product's sampler otherwise unchanged:
- guidance rescale (Lin et al. 2024): the guided velocity rescaled, per cell, to the standard
  deviation of the conditional one, mixed with weight phi;
- a noise temperature tau: the flow starts from N(0, tau^2 I) instead of N(0, I).
Writes results/sampling_spread_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESCALE = [(2.0, 0.5), (2.0, 1.0), (3.0, 0.7), (3.0, 1.0)]  # (w, phi)
TEMPERATURE = [(2.0, 1.1), (2.0, 1.2), (2.0, 1.35), (3.0, 1.2)]  # (w, tau)


def oracle_corrections(train, test, generated, keys, seed) -> dict:
    """Mean over groups of MMD to the test cells after each oracle correction, in the test cells' PC space."""
    from pysave import metrics as M
    import eval_generation

    space = M.fit_reference_space(test, seed=seed)
    z_train, z_test, z_gen = space.project(train), space.project(test), space.project(generated)
    g_train, g_test, g_gen = (eval_generation.groups(a, keys) for a in (train, test, generated))
    rng = np.random.default_rng(seed)
    rows = []
    for g in np.unique(g_test):
        real, ref, gen = z_test[g_test == g], z_train[g_train == g], z_gen[g_gen == g]
        if min(len(real), len(ref), len(gen)) < 2:
            continue
        centre, ref_centre = gen.mean(0), ref.mean(0)
        stretch = np.sqrt(ref.var(0).sum() / gen.var(0).sum())
        gauss = rng.multivariate_normal(ref_centre, np.cov(ref.T) + 1e-6 * np.eye(ref.shape[1]), size=len(real))
        sets = {"as generated": gen, "shift": gen - centre + ref_centre, "scale": (gen - centre) * stretch + centre,
                "shift and scale": (gen - centre) * stretch + ref_centre, "gaussian": gauss}
        row = {f"MMD {k}": M.mmd_rbf(real, v, seed=seed) for k, v in sets.items()}
        row.update(n_test=len(real), variance_ratio=1 / stretch ** 2)
        rows.append(row)
    big = [r for r in rows if r["n_test"] > 5]
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k != "n_test"}  # noqa: E731
    return {"all groups": mean(rows), "groups with > 5 test cells": mean(big), "groups": len(rows)}


def run(model_dir, dataset, seed) -> dict:
    import torch

    import pysave.flow as flow
    sys.path.insert(0, HERE)
    import eval_generation

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    product = dict(seed=seed, output="sample", n_steps=10, solver="midpoint")
    sets = {"default (w2)": model.generate_like(test.obs[keys], guidance=2.0, **product)}
    oracle = oracle_corrections(train, test, sets["default (w2)"], keys, seed)

    phi = [0.0]

    def rescaled(field, codes, guidance):
        uncond = field.condition_embedding.all_masked(codes.shape[0], codes.device)

        def velocity(t, x):
            tt = t.expand(x.shape[0]) if t.dim() == 0 else t
            v_cond, v_uncond = field(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([codes, uncond])).chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
            return phi[0] * v * (v_cond.std(1, keepdim=True) / v.std(1, keepdim=True)) + (1 - phi[0]) * v
        return velocity

    tau = [1.0]

    class TemperedTorch:  # pysave.flow's torch, with the starting noise scaled by tau
        def __getattr__(self, name):
            return getattr(torch, name)

        def randn(self, *args, **kwargs):
            return tau[0] * torch.randn(*args, **kwargs)

    @contextlib.contextmanager
    def patched(name, value):  # sample_latents looks both names up in pysave.flow at call time
        original = getattr(flow, name)
        setattr(flow, name, value)
        try:
            yield
        finally:
            setattr(flow, name, original)

    settings = ([(f"rescale w{w:g} phi{f:g}", w, "guided_velocity", rescaled, phi, f) for w, f in RESCALE]
                + [(f"temperature w{w:g} tau{t:g}", w, "torch", TemperedTorch(), tau, t) for w, t in TEMPERATURE])
    for name, w, attr, replacement, knob, value in settings:
        knob[0] = value
        with patched(attr, replacement):
            sets[name] = model.generate_like(test.obs[keys], guidance=w, **product)
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets, oracle=oracle)


def main():
    sys.path.insert(0, HERE)
    import eval_generation

    r = eval_generation.diagnostic_main(__doc__, run, "sampling_spread")
    for part, o in r["oracle"].items():
        if isinstance(o, dict):
            print(f"  oracle, {part}: " + ", ".join(f"{k} {v:.3f}" for k, v in o.items()))
    eval_generation.print_scored_sets(r)


if __name__ == "__main__":
    main()
