"""Recentring each seen combination's sampled latents on its training latent mean, with the
flow's mean for that combination estimated from a pilot draw (trial, not a test).

    .venv/bin/python benchmarks/try_latent_recentre.py --model-dir DIR --dataset pbmc_3tech --seed 0

Guidance moves each combination's centre past where its training cells lie; calibration's
offsets are the decoder's bias *at the training latents*. So the sampled latents of a
combination c are moved by m_c - p_c: m_c its training cells' mean encoder latent (stored with
the model), p_c the mean of P latents the flow samples for c under the same sampler settings from
a fixed noise (so the offset is the same whatever the chunk, batch size or seed). "own": p_c is
the mean of the cells being generated (chunk-dependent; the upper bound of the idea).
"""
from __future__ import annotations

import os
import sys
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
PILOTS = [64, 256]


def sampler(original, model, pilot: int | None):
    import torch

    stats = model.condition_latents
    mean = (torch.as_tensor(stats["means"]) - model.latent_mean) / model.latent_std
    index = {tuple(int(v) for v in row): j for j, row in enumerate(stats["codes"]) if stats["counts"][j] >= 3}
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
                    cache[key] = original(field, pilot_codes, guidance, n_steps, solver, torch.Generator().manual_seed(12345)).mean(0)
                centre = cache[key]
            out[rows] = z[rows] + (mean[j] - centre)
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
    for pilot in PILOTS + [None]:
        with mock.patch.object(model_module, "sample_latents", sampler(original, model, pilot)):
            sets[f"recentred, pilot {pilot or 'own'}"] = model.generate_like(test.obs[keys], **product)
    for w in (1.0, 2.0):
        with mock.patch.object(model_module, "sample_latents", sampler(original, model, 256)):
            sets[f"recentred, pilot 256, w{w:g}"] = model.generate_like(test.obs[keys], **{**product, "guidance": w})
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import eval_generation

    eval_generation.diagnostic_cli(__doc__, run, "latent_recentre")
