"""Widening each seen combination's sampled latents around its *training* latent mean (stored
with the model), at today's guidance (benchmark diagnostic, not a test).

    .venv/bin/python benchmarks/try_latent_spread_stored.py --model-dir DIR --dataset pbmc_3tech --seed 0

z -> m_c + alpha (z - m_c), with m_c the combination's mean encoder latent over its training
cells (``condition_latents["means"]``, in the flow's normalized space), so the cells do not
depend on the chunk they are generated in. Combinations without a stored mean are left as sampled.
Also scored: the widening around the generated cells' own mean (try_latent_spread.py) and the
generated latents moved onto m_c and widened ("recentred"), both chunk-dependent.
Writes results/latent_spread_stored_<dataset>_s<seed>.json (benchmarks/README.md, "Group centres
and spread in the latent, at w = 1.5").
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STORED = [1.1, 1.2, 1.3, 1.4]
# generate's default since d6f1967 (eval_generation.PRODUCT_SAMPLING keeps the diagnostics' w = 2)
SAMPLING = dict(output="sample", n_steps=10, solver="midpoint", guidance=1.5)


def stored_means(model):
    """Each combination's training mean latent in the flow's space, and {combination: row}."""
    import torch

    stats = model.condition_latents
    mean = (torch.as_tensor(stats["means"]) - model.latent_mean) / model.latent_std
    return mean, {tuple(int(v) for v in row): j for j, row in enumerate(stats["codes"])}


def sampler(alpha: float, around: str):
    """A patch of sample_latents: each combination's latents z widened alpha times around its
    stored training mean m_c ("stored"), or moved onto m_c and widened around it ("recentred")."""
    import torch

    def patch(original, model):
        mean, index = stored_means(model)

        def sample(field, codes, *args, **kwargs):
            z = original(field, codes, *args, **kwargs)
            distinct, group = torch.unique(codes, dim=0, return_inverse=True)
            out = z.clone()
            for g, row in enumerate(distinct.tolist()):
                rows = group == g
                j = index.get(tuple(int(v) for v in row))
                if j is None or int(rows.sum()) < 2:
                    continue
                centre = mean[j][None] if around == "stored" else z[rows].mean(0, keepdim=True)
                out[rows] = mean[j][None] + alpha * (z[rows] - centre)
            return out
        return sample
    return patch


def run(model_dir, dataset, seed) -> dict:
    sys.path.insert(0, HERE)
    import eval_generation
    from try_latent_spread import widened_sampler

    variants = ([(f"stored alpha {a:g}", sampler(a, "stored"), {}) for a in STORED]
                + [(f"own alpha {a:g}", lambda original, model, a=a: widened_sampler(original, a), {}) for a in (1.2, 1.4)]
                + [(f"recentred alpha {a:g}", sampler(a, "recentred"), {}) for a in (1.0, 1.2)])
    return eval_generation.sampled_under_patches(model_dir, dataset, seed, variants, SAMPLING)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import eval_generation

    eval_generation.diagnostic_cli(__doc__, run, "latent_spread_stored")
