"""Would guidance in a limited interval of t help generation? (benchmark diagnostic, not a test)

    .venv/bin/python benchmarks/try_guidance_interval.py --model-dir DIR --dataset pbmc_3tech --seed 0

Guidance (w = 2) moves generated groups towards their real centres but narrows their spread
(benchmarks/README.md). Kynkaanniemi et al. (2024, "Applying guidance in a limited interval")
found that guidance is harmful near the noise, useless near the data and best in between. Here
the guided velocity is used only for t in [lo, hi] and the plain conditional one (w = 1, one
pass) elsewhere (t = 0 is the noise). The product's sampler is used unchanged, with
``pysave.flow.guided_velocity`` wrapped for the run. Each interval samples the same test-cell
conditions from a model kept by ``run_benchmarks.py --model-dir`` (sampled output, 10 midpoint
steps) and is scored with the generation protocol. Writes results/guidance_interval_<dataset>_s<seed>.json.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# (w, lo, hi); (2, 0, 1) is the product's default
SETTINGS = [(2.0, 0.0, 1.0), (2.0, 0.0, 0.5), (2.0, 0.0, 0.7), (2.0, 0.2, 0.8), (2.0, 0.3, 1.0), (2.0, 0.0, 0.3),
            (2.0, 0.5, 1.0), (3.0, 0.0, 0.5), (3.0, 0.2, 0.8)]


def run(model_dir, dataset, seed) -> dict:
    import pysave.flow as flow
    sys.path.insert(0, HERE)
    import eval_generation

    guided = flow.guided_velocity
    interval = [0.0, 1.0]

    def in_interval(field, codes, guidance):
        inside, outside = guided(field, codes, guidance), guided(field, codes, 1.0)
        return lambda t, x: (inside if interval[0] <= float(t.reshape(-1)[0]) <= interval[1] else outside)(t, x)

    model, train, test, keys = eval_generation.kept_model(model_dir, dataset, seed)
    sets = {}
    flow.guided_velocity = in_interval  # sample_latents looks it up in pysave.flow at call time
    try:
        for w, lo, hi in SETTINGS:
            interval[:] = [lo, hi]
            sets[f"w{w:g} t in [{lo:g}, {hi:g}]"] = model.generate_like(test.obs[keys], seed=seed, output="sample", guidance=w)
    finally:
        flow.guided_velocity = guided
    return eval_generation.scored_result(model_dir, dataset, seed, train, test, keys, sets)


def main():
    sys.path.insert(0, HERE)
    import eval_generation

    r = eval_generation.diagnostic_main(__doc__, run, "guidance_interval")
    for w, lo, hi in SETTINGS:
        name = f"w{w:g} t in [{lo:g}, {hi:g}]"
        print(f"  {name}: {r[name]['W1']:.3f} / {r[name]['MMD']:.3f}")


if __name__ == "__main__":
    main()
