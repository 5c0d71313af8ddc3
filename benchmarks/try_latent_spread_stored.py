"""Widening each seen combination's sampled latents around its *training* latent mean (stored
with the model), at today's guidance (trial, not a test).

    .venv/bin/python benchmarks/try_latent_spread_stored.py --model-dir DIR --dataset pbmc_3tech --seed 0

z -> m_c + alpha (z - m_c), with m_c the combination's mean encoder latent over its training
cells (``condition_latents["means"]``, in the flow's normalized space), so the cells do not
depend on the chunk they are generated in. Combinations without a stored mean are left as sampled.
Also scored: the widening around the generated cells' own mean (try_latent_spread.py) and the
generated latents moved onto m_c and widened ("recentred").
"""
from __future__ import annotations

import os
import sys
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
STORED = [1.1, 1.2, 1.3, 1.4]


def sampler(original, model, alpha: float, around: str):
    import torch

    stats = model.condition_latents
    mean = (torch.as_tensor(stats["means"]) - model.latent_mean) / model.latent_std
    index = {tuple(int(v) for v in row): j for j, row in enumerate(stats["codes"])}

    def sample(field, codes, *args, **kwargs):
        z = original(field, codes, *args, **kwargs)
        distinct, group = torch.unique(codes, dim=0, return_inverse=True)
        out = z.clone()
        for g, row in enumerate(distinct.tolist()):
            rows = group == g
            j = index.get(tuple(int(v) for v in row))
            if j is None or int(rows.sum()) < 2:
                continue
            own = z[rows].mean(0, keepdim=True)
            m = mean[j][None] if around == "stored" else own
            if around == "recentred":
                out[rows] = mean[j][None] + alpha * (z[rows] - own)
            else:
                out[rows] = m + alpha * (z[rows] - m)
        return out
    return sample


def run(model_dir, dataset, seed) -> dict:
    import pysave.model as model_module
    sys.path.insert(0, HERE)
    import eval_generation

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    product = dict(seed=seed, output="sample", n_steps=10, solver="midpoint", guidance=1.5)
    original = model_module.sample_latents
    sets = {"default (w1.5)": model.generate_like(test.obs[keys], **product)}
    trials = [("stored", a) for a in STORED] + [("own", 1.2), ("own", 1.4), ("recentred", 1.0), ("recentred", 1.2)]
    for around, a in trials:
        with mock.patch.object(model_module, "sample_latents", sampler(original, model, a, around)):
            sets[f"{around} alpha {a:g}"] = model.generate_like(test.obs[keys], **product)
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import eval_generation

    eval_generation.diagnostic_cli(__doc__, run, "latent_spread_stored")
