"""Guidance for the centre only: unguided spread around the guided mean? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_guided_mean.py --model-dir DIR --dataset pbmc_3tech --seed 0

Classifier-free guidance (w = 2) puts each group's centre in the right place but narrows the
group: within-group variance 54.4 at w = 1 against 44.3 at w = 2 (real 67.2; pbmc_3tech seed 0,
benchmarks/README.md), and the oracles of try_sampling_spread.py say the spread is worth more
than the centre on pbmc_3tech. Here each combination's latent offset of guidance is estimated
once, from REFERENCE_CELLS cells sampled at w = 1 and at w (same noise): delta_c = mean_w - mean_1.
The cells are then sampled at w = 1 and moved by their combination's delta_c: w = 1's spread,
w's centre. Nothing here uses the test or training cells, so the product could do the same (one
extra sampling of REFERENCE_CELLS cells per combination). Sampled output, 10 midpoint steps, as
the product. Writes results/guided_mean_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_CELLS = 256
GUIDANCE = (2.0, 3.0)


def run(model_dir, dataset, seed) -> dict:
    import torch

    sys.path.insert(0, HERE)
    import eval_generation

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    product = dict(output="sample", n_steps=10, solver="midpoint")
    table = test.obs[keys]
    group = eval_generation.groups(test, keys)
    combos = table.drop_duplicates().reset_index(drop=True)
    reference = combos.loc[np.repeat(np.arange(len(combos)), REFERENCE_CELLS)].reset_index(drop=True)
    ref_group = reference.astype(str).agg(" | ".join, axis=1).to_numpy()

    def latent_means(w):
        z = model.generate_like(reference, guidance=w, seed=seed + 1000, **product).obsm["X_save"]
        return {g: z[ref_group == g].mean(0) for g in np.unique(ref_group)}

    base = latent_means(1.0)
    _, codes = model._generation_plan(table, 1.0, 10, "midpoint")
    sets, spread = {}, {}
    unguided = model.generate_like(table, guidance=1.0, seed=seed, **product)
    sets["w1"] = unguided
    for w in GUIDANCE:
        sets[f"w{w:g}"] = model.generate_like(table, guidance=w, seed=seed, **product)
        means = latent_means(w)
        delta = np.stack([means[g] - base[g] for g in group]).astype(np.float32)
        z = torch.from_numpy(unguided.obsm["X_save"] + delta)
        x = model._output_sampler("sample", seed)(model._decode(z, codes), codes)
        moved = unguided.copy()
        moved.X = x
        moved.obsm["X_save"] = z.numpy()
        sets[f"w1 moved to w{w:g}'s mean"] = moved
        spread[f"w{w:g}"] = float(np.mean([np.linalg.norm(means[g] - base[g]) for g in means]))
    # within-group latent variance (total over dimensions), mean over groups with > 5 cells
    variance = {}
    for name, a in sets.items():
        z = a.obsm["X_save"]
        variance[name] = float(np.mean([z[group == g].var(0).sum() for g in np.unique(group) if (group == g).sum() > 5]))
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets, reference_cells=REFERENCE_CELLS,
                                         mean_offset_norm=spread, latent_variance=variance)


def main():
    sys.path.insert(0, HERE)
    import eval_generation

    r = eval_generation.diagnostic_main(__doc__, run, "guided_mean")
    print("  latent within-group variance:", {k: round(v, 1) for k, v in r["latent_variance"].items()})
    eval_generation.print_scored_sets(r)


if __name__ == "__main__":
    main()
