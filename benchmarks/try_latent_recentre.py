"""Recentring each seen combination's sampled latents on its training latent mean, with the
flow's mean for that combination estimated from a pilot draw (benchmark diagnostic, not a test).

    .venv/bin/python benchmarks/try_latent_recentre.py --model-dir DIR --dataset pbmc_3tech --seed 0

Calibration's offsets are the decoder's bias *at the training latents*, so the sampled latents of
a seen combination c (>= 3 training cells) are moved by m_c - p_c: m_c its training cells' mean
encoder latent (stored with the model), p_c the mean of P latents the flow samples for c under the
same sampler settings from a fixed noise (the move is the same whatever the chunk, batch size or
seed). "own": p_c is the mean of the cells being generated (chunk-dependent; it pins each
generated group's mean). Writes results/latent_recentre_<dataset>_s<seed>.json
(benchmarks/README.md, "Group centres and spread in the latent, at w = 1.5").
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PILOTS = [64, 256]


def recentring(pilot: int | None):
    """A patch of sample_latents: each seen combination's latents moved by m_c - p_c."""
    import torch

    def patch(original, model):
        from try_latent_spread_stored import stored_means

        mean, index = stored_means(model)
        index = {c: j for c, j in index.items() if model.condition_latents["counts"][j] >= 3}
        cache = {}

        def sample(field, codes, guidance, n_steps, solver, generator, *args, **kwargs):
            z = original(field, codes, guidance, n_steps, solver, generator, *args, **kwargs)
            distinct, group = torch.unique(codes, dim=0, return_inverse=True)
            out = z.clone()
            for g, row in enumerate(distinct.tolist()):
                rows = group == g
                j = index.get(tuple(int(v) for v in row))
                if j is None:
                    continue
                if pilot is None:
                    centre = z[rows].mean(0)
                else:
                    key = (tuple(row), guidance, n_steps, solver)
                    if key not in cache:
                        pilot_codes = torch.as_tensor(row, dtype=codes.dtype).repeat(pilot, 1)
                        cache[key] = original(field, pilot_codes, guidance, n_steps, solver,
                                              torch.Generator().manual_seed(12345)).mean(0)
                    centre = cache[key]
                out[rows] = z[rows] + (mean[j] - centre)
            return out
        return sample
    return patch


def run(model_dir, dataset, seed) -> dict:
    sys.path.insert(0, HERE)
    import eval_generation
    from try_latent_spread_stored import SAMPLING

    variants = ([(f"recentred, pilot {p or 'own'}", recentring(p), {}) for p in PILOTS + [None]]
                + [(f"recentred, pilot 256, w{w:g}", recentring(256), {"guidance": w}) for w in (1.0, 2.0)])
    return eval_generation.sampled_under_patches(model_dir, dataset, seed, variants, SAMPLING)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import eval_generation

    eval_generation.diagnostic_cli(__doc__, run, "latent_recentre")
