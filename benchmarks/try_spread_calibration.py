"""Widening each seen combination's generated decoder means in expression space, before counts are
drawn (benchmark diagnostic, not a test).

    .venv/bin/python benchmarks/try_spread_calibration.py --model-dir DIR --dataset pbmc_3tech --seed 0

Generated groups hold two-thirds to three-quarters of the real within-group spread, and widening
the flow's latents did not pay ("Group centres and spread in the latent"). Here the calibrated
decoder means d of each combination c are widened in log1p(CP10k), the space the counts are drawn
around, so that nothing of the decoder's nonlinearity sits between the widening and the cells:
- "own alpha a": d -> g + a (d - g), g the generated group's own mean (chunk-dependent: a set's
  cells would depend on the cells generated beside them);
- "pilot alpha a": the same around p_c, the mean decoder mean of a pilot draw of PILOT cells of c at
  the same sampler settings from a fixed seed (the same whatever the chunk, batch size or seed);
- "per-PC k, cap s": around p_c, each of the first k principal components of the training cells'
  log1p(CP10k) scaled by its own factor, so that the pilot's sampled cells get the per-PC variance
  of c's training cells: factor^2 = (training variance - count noise) / the pilot's decoder-mean
  variance, with the count noise the pilot's sampled variance minus its decoder-mean variance,
  clipped to [1, s^2]; only combinations with at least MIN_CELLS training cells.
Nothing comes from the test cells. Writes results/spread_calibration_<dataset>_s<seed>.json
(benchmarks/README.md, "Spread calibration in expression space").
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLING = dict(output="sample", n_steps=10, solver="midpoint", guidance=1.5)  # generate's defaults
PILOT, PILOT_SEED, MIN_CELLS = 256, 12345, 10
OWN, PILOT_ALPHAS, PER_PC = [1.4], [1.3, 1.4], [(10, 2.0), (30, 2.0)]


def widened_apply(original, plans):
    """Calibration.apply, then each combination with a plan (centre, basis or None, factors)
    widened around its centre; plans=None widens around the group's own mean by OWN's factor."""
    def apply(self, decoded, codes):
        decoded = original(self, decoded, codes)
        distinct, inverse = np.unique(np.asarray(codes), axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        for g, row in enumerate(distinct):
            rows = inverse == g
            plan = plans.get(tuple(int(v) for v in row))
            if plan is None:
                continue
            centre, basis, factor = plan
            if centre is None:  # own mean
                if rows.sum() < 2:
                    continue
                centre = decoded[rows].mean(0, keepdims=True)
            deviation = decoded[rows] - centre
            decoded[rows] = (centre + factor * deviation if basis is None
                             else centre + deviation + ((deviation @ basis.T) * (factor - 1)) @ basis)
        np.maximum(decoded, 0.0, out=decoded)
        return decoded
    return apply


def run(model_dir, dataset, seed) -> dict:
    from unittest import mock

    from sklearn.decomposition import PCA

    sys.path.insert(0, HERE)
    import eval_generation
    import pysave.calibration as calibration
    from pysave.shift import log_normalized_rows

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    product = dict(seed=seed, **SAMPLING)
    prep = model._prepare(train)
    real = log_normalized_rows(prep, model.scalers, 0, train.n_obs)
    train_codes = np.asarray(prep.codes)
    basis_all = PCA(max(k for k, _ in PER_PC), random_state=seed, svd_solver="full").fit(real).components_.astype(np.float32)

    combinations = test.obs[keys].drop_duplicates()
    pilot_table = combinations.loc[combinations.index.repeat(PILOT)].reset_index(drop=True)
    pilot_mean = np.asarray(model.generate_like(pilot_table, **{**product, "output": "mean", "seed": PILOT_SEED}).X)
    pilot_sample = model.generate_like(pilot_table, **{**product, "output": "sample", "seed": PILOT_SEED}).X
    pilot_sample = pilot_sample.toarray() if hasattr(pilot_sample, "toarray") else np.asarray(pilot_sample)
    names = pilot_table[keys].astype(str).agg("|".join, axis=1).to_numpy()
    pilots = {}
    for name in np.unique(names):
        code = tuple(model._code_of(k, v) for k, v in zip(keys, name.split("|")))
        in_training = (train_codes == np.array(code)).all(1)
        rows = names == name
        pilots[code] = (pilot_mean[rows], pilot_sample[rows], real[in_training])

    variants = {f"own alpha {a:g}": {c: (None, None, a) for c in pilots} for a in OWN}
    variants.update({f"pilot alpha {a:g}": {c: (m.mean(0, keepdims=True), None, a) for c, (m, _, _) in pilots.items()}
                     for a in PILOT_ALPHAS})
    factors = {}
    for k, cap in PER_PC:
        basis, plans, name = basis_all[:k], {}, f"per-PC {k}, cap {cap:g}"
        for c, (means, samples, training) in pilots.items():
            if len(training) < MIN_CELLS:
                continue
            centre = means.mean(0, keepdims=True)
            v_real = ((training - training.mean(0)) @ basis.T).var(0, ddof=1)
            v_mean = ((means - centre) @ basis.T).var(0, ddof=1)
            v_sample = ((samples - samples.mean(0)) @ basis.T).var(0, ddof=1)
            noise = np.maximum(v_sample - v_mean, 0.0)
            factor = np.sqrt(np.clip((v_real - noise) / np.maximum(v_mean, 1e-8), 1.0, cap ** 2)).astype(np.float32)
            plans[c] = (centre, basis, factor)
        variants[name] = plans
        all_factors = np.concatenate([p[2] for p in plans.values()]) if plans else np.ones(1)
        factors[name] = {"combinations": len(plans), "median": float(np.median(all_factors)),
                         "at_cap": float(np.mean(all_factors >= cap - 1e-6))}

    original = calibration.Calibration.apply
    sets = {f"default (w{product['guidance']:g})": model.generate_like(test.obs[keys], **product)}
    for name, plans in variants.items():
        with mock.patch.object(calibration.Calibration, "apply", widened_apply(original, plans)):
            sets[name] = model.generate_like(test.obs[keys], **product)
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets, per_pc_factors=factors,
                                         pilot=PILOT, min_cells=MIN_CELLS)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import eval_generation

    eval_generation.diagnostic_cli(__doc__, run, "spread_calibration")
