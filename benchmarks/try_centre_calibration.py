"""Can each condition combination's mean be calibrated on its training cells?
(benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_centre_calibration.py --model-dir DIR --dataset pbmc_3tech --seed 0

The "shift" oracle of try_sampling_spread.py (each generated group's mean moved onto its training
cells' mean in the scoring space) closed much of the MMD gap to the per-group Gaussian. For a
combination seen in training, the product knows those training cells, so the same correction can
be made without the test cells: a per-combination offset r_c added to the decoder mean (log1p(CP10k)
units, clipped at 0) before the counts are drawn. Two estimates of r_c, both from training cells only:
- "recon": the training cells' mean log1p(CP10k) minus the mean decoder output of their own
  encoder means (corrects the VAE's bias only);
- "generated": the same mean minus the mean decoder output of N_REFERENCE cells the flow samples
  for the combination with another seed (corrects the VAE's and the flow's bias together);
each also shrunk by n_c / (n_c + kappa) toward no offset (n_c the combination's training cells).
The product's sampler is otherwise unchanged (w = 2, 10 midpoint steps, sampled counts).
Writes results/centre_calibration_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import os
import sys
from unittest import mock

import numpy as np
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
N_REFERENCE = 256
SCALES = [1.0, 1.2, 1.4]
ALPHAS = [1.2, 1.4]


def log_normalized(adata) -> np.ndarray:
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=np.float64)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32)


def combination_offsets(codes: np.ndarray, real: np.ndarray, reference_codes: np.ndarray, reference: np.ndarray, kappa: float) -> dict:
    """{combination (tuple of codes): offset per gene}: training cells' mean minus the reference's mean, shrunk."""
    out = {}
    for row in np.unique(codes, axis=0):
        cells = (codes == row).all(1)
        ref = (reference_codes == row).all(1)
        n = int(cells.sum())
        out[tuple(row)] = (real[cells].mean(0) - reference[ref].mean(0)) * (n / (n + kappa))
    return out


def offset_decoder(original, offsets: dict):
    """``original`` (a model's ``_decode``) with each row's combination offset added, clipped at 0."""
    def decode(z, chunk_codes, *args, **kwargs):
        x = original(z, chunk_codes, *args, **kwargs)
        for i, row in enumerate(chunk_codes):
            off = offsets.get(tuple(row))
            if off is not None:
                x[i] = np.maximum(x[i] + off, 0)
        return x
    return decode


def generated_reference(model, train, keys, product: dict, **overrides):
    """N_REFERENCE decoder means per training combination through the flow, at the sampler settings
    ``product`` with seed + 1000 (a seed the scored cells do not use): their condition codes and values."""
    from pysave import data as D

    table = train.obs[keys].drop_duplicates().reset_index(drop=True)
    reference_obs = table.loc[table.index.repeat(N_REFERENCE)].reset_index(drop=True)
    reference_obs.index = reference_obs.index.astype(str)
    reference = model.generate_like(reference_obs, **{**product, "seed": product["seed"] + 1000, "output": "mean", **overrides})
    return D.encode_conditions(reference.obs, model.registry), np.asarray(reference.X)


def run(model_dir, dataset, seed) -> dict:
    import torch

    import pysave.model as model_module
    sys.path.insert(0, HERE)
    import eval_generation

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    product = dict(seed=seed, **eval_generation.PRODUCT_SAMPLING)
    real = log_normalized(train)
    prep = model._prepare(train)
    codes = np.asarray(prep.codes)
    mu, _ = model._encode(prep)
    recon = model._decode(mu, codes)
    combos = np.unique(codes, axis=0)
    reference_codes, reference = generated_reference(model, train, keys, product)
    original = model._decode

    # The same offsets in the model's stored expression PCs (pc_components, pc_means: what a model
    # keeps), from the training cells' reconstructions: a table of combinations x 30, not x genes.
    stats = model.condition_latents
    W, centre = stats["pc_components"].astype(np.float64), stats["pc_center"].astype(np.float64)
    positions = (recon - centre) @ W.T
    stored = {tuple(row): i for i, row in enumerate(stats["codes"])}

    def pc_calibrated(scale):
        def decode(z, chunk_codes, *args, **kwargs):
            x = original(z, chunk_codes, *args, **kwargs)
            p = (x - centre) @ W.T
            for i, row in enumerate(chunk_codes):
                j = stored.get(tuple(row))
                if j is None:
                    continue
                cells = (codes == row).all(1)
                m_dec = positions[cells].mean(0)
                target = stats["pc_means"][j] + scale * (p[i] - m_dec)
                x[i] = np.maximum(x[i] + (target - p[i]) @ W, 0)
            return x
        return decode

    from try_latent_spread import widened_sampler  # beside this script

    sets = {"default (w2)": model.generate_like(test.obs[keys], **product)}
    for name, ref_codes, ref in (("recon", codes, recon), ("generated", reference_codes, reference)):
        offsets = combination_offsets(codes, real, ref_codes, ref, 0)
        with mock.patch.object(model, "_decode", offset_decoder(original, offsets)):
            sets[f"{name} genes"] = model.generate_like(test.obs[keys], **product)
    for scale in SCALES:
        with mock.patch.object(model, "_decode", pc_calibrated(scale)):
            sets[f"recon pcs scale {scale:g}"] = model.generate_like(test.obs[keys], **product)
    # The training cells' posterior samples decoded (what the flow learns to sample), not their means.
    _, logvar = model._encode(prep)
    g = torch.Generator().manual_seed(seed)
    sampled = model._decode(mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g), codes)
    with mock.patch.object(model, "_decode", offset_decoder(original, combination_offsets(codes, real, codes, sampled, 0))):
        sets["recon posterior samples genes"] = model.generate_like(test.obs[keys], **product)
    # Offsets together with each group's latents widened around their mean (try_latent_spread.py).
    offsets = combination_offsets(codes, real, codes, recon, 0)
    for alpha in ALPHAS:
        sampler = widened_sampler(model_module.sample_latents, alpha)
        with mock.patch.object(model, "_decode", offset_decoder(original, offsets)), mock.patch.object(model_module, "sample_latents", sampler):
            sets[f"recon genes, latents widened {alpha:g}"] = model.generate_like(test.obs[keys], **product)
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets, n_reference=N_REFERENCE,
                                         combinations=len(combos))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import eval_generation

    eval_generation.diagnostic_cli(__doc__, run, "centre_calibration")
