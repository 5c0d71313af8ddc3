"""Calibrate each combination against the flow's own output, not the decoder's reconstructions?
(benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_generated_calibration.py --model-dir DIR --dataset pbmc4k --seed 0

The product (since 2026-12-04) adds to the decoder mean of each combination seen in training the
offset between its training cells' mean log1p(CP10k) and the decoder mean of their own encoder
means: the VAE's bias ("recon"). try_centre_calibration.py also took offsets against cells the
flow samples for the combination ("generated": the VAE's and the flow's bias together, at one
sampler setting) and found them better on both W1 and MMD, on pbmc_3tech and Baron models that were
not yet calibrated. This compares the two on a model trained by today's product (kept with
``run_benchmarks.py --model-dir``), on the single-condition sets too: the product as it is, the
same model uncalibrated, and "generated" offsets (decoder means of N_REFERENCE cells per
combination sampled with seed + 1000 at the product's sampler settings; nothing from the test
cells). Writes results/generated_calibration_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import os
import sys
from unittest import mock

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def run(model_dir, dataset, seed) -> dict:
    sys.path.insert(0, HERE)
    import eval_generation
    from try_centre_calibration import N_REFERENCE, combination_offsets, generated_reference, log_normalized, offset_decoder

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    product = dict(seed=seed, **eval_generation.PRODUCT_SAMPLING)
    codes = np.asarray(model._prepare(train).codes)
    reference_codes, reference = generated_reference(model, train, keys, product, calibrate=False)
    offsets = combination_offsets(codes, log_normalized(train), reference_codes, reference, 0)
    sets = {"product (recon offsets)": model.generate_like(test.obs[keys], **product),
            "uncalibrated": model.generate_like(test.obs[keys], **product, calibrate=False)}
    with mock.patch.object(model, "_decode", offset_decoder(model._decode, offsets)):
        sets["generated offsets"] = model.generate_like(test.obs[keys], **product, calibrate=False)
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets, n_reference=N_REFERENCE)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import eval_generation

    eval_generation.diagnostic_cli(__doc__, run, "generated_calibration")
