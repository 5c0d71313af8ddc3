"""The spread calibration and its variants, on splits that played no part in choosing it (benchmark
diagnostic, not a test).

    .venv/bin/python benchmarks/try_spread_variants.py --dataset pbmc_3tech --seed 4 --model-dir DIR [--epochs 60]
        [--params '{"n_blocks": 1, "latent_token_size": 128, "hidden_size": 512}' --tag _noattn]
    .venv/bin/python benchmarks/try_spread_variants.py --table      # the results so far, as markdown

The product's spread calibration (30 PCs, factors capped at 2, pilots of 256 cells) was chosen on
the generation sets' splits of seeds 0-3 ("Spread calibration in expression space"). This trains
the harness's model (``eval_generation.trained_model``: the fast network, ``--epochs``; kept in
``--model-dir``, and loaded from there when kept) on the split of ``--seed`` (4 and up were not
used to choose) and generates the test cells' combinations at the product's defaults:
- "default": the product (offsets, then the spread);
- "offsets only": the spread turned off (``SAVE._spread_plan`` draws no pilot and sets no factors);
- "cap 1.5" / "cap 3": the factors capped at 1.5 or 3 instead of 2;
- "pilot 128": pilots of 128 cells instead of 256 (half the pilots' cost);
- "narrow 0.5" / "narrow 0.5, cap 1.5": factors between 0.5 and 2 (or 1.5), so that the PCs where
  the pilot's sampled cells are wider than the training cells are narrowed too (the product
  only widens).
Each variant starts without kept pilots, and its first call is timed (pilots included).
``--params`` changes the network over the fast one (JSON, as ``run_benchmarks.py --params``), and
``--tag`` names such results. Writes results/spread_variants_<dataset>_s<seed><tag>.json
(benchmarks/README.md, "Spread calibration on splits not used to choose it").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLING = dict(output="sample", n_steps=10, solver="midpoint", guidance=1.5)  # generate's defaults


def variants(model_module):
    """(name, patches) with patches a list of (object, attribute, value) to set during the call."""
    original = model_module.spread_factors

    def capped(cap, floor=1.0):
        return lambda *args, **kwargs: original(*args, **{**kwargs, "max_factor": cap, "min_factor": floor})

    return [("default", []),
            ("offsets only", [(model_module.SAVE, "_spread_plan", lambda self, *args, **kwargs: {})]),
            ("cap 1.5", [(model_module, "spread_factors", capped(1.5))]),
            ("cap 3", [(model_module, "spread_factors", capped(3.0))]),
            ("pilot 128", [(model_module, "SPREAD_PILOT_CELLS", 128)]),
            ("narrow 0.5", [(model_module, "spread_factors", capped(2.0, 0.5))]),
            ("narrow 0.5, cap 1.5", [(model_module, "spread_factors", capped(1.5, 0.5))])]


def run(dataset, seed, epochs, model_dir, params=None, tag="") -> dict:
    from contextlib import ExitStack
    from unittest import mock

    import torch

    sys.path.insert(0, HERE)
    import eval_generation
    import pysave.model as model_module

    torch.set_num_threads(1)
    train, test, keys, batch_key = eval_generation.split(dataset, seed)
    model, train_seconds = eval_generation.trained_model(dataset, seed, epochs, {**eval_generation.FAST, **(params or {})},
                                                         train, keys, batch_key, model_dir)
    sets, seconds = {}, {}
    for name, patches in variants(model_module):
        model._spread_pilots = {}  # every variant draws its own pilots
        with ExitStack() as stack:
            for target, attribute, value in patches:
                stack.enter_context(mock.patch.object(target, attribute, value))
            t0 = time.perf_counter()
            sets[name] = model.generate_like(test.obs[keys], seed=seed, **SAMPLING)
            seconds[name] = time.perf_counter() - t0
        print(f"{dataset} s{seed} {name}: {seconds[name]:.1f} s", flush=True)
    return eval_generation.scored_result(model_dir, dataset, seed, train[:, model.genes].copy(), test[:, model.genes].copy(),
                                         keys, sets, epochs=epochs, train_seconds=train_seconds, sampling=SAMPLING,
                                         first_call_seconds=seconds, cells=int(test.n_obs), params=params or {}, tag=tag,
                                         split_used_to_choose_the_defaults=seed < 4)


def table() -> str:
    """A markdown table over results/spread_variants_*.json: per dataset, network (``tag``) and kind
    of split (the seeds used to choose the defaults, or not), each variant's mean W1 / floor and
    MMD minus the Gaussian's MMD over the seeds, and on how many seeds that MMD is under the
    Gaussian's."""
    import glob

    import numpy as np

    results = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(HERE, "results", "spread_variants_*.json")))]
    names = [name for name, _ in variants(type("m", (), {"spread_factors": None, "SAVE": None}))]
    lines = ["| set | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for dataset, tag in sorted({(r["dataset"], r.get("tag", "")) for r in results}):
        for chosen in (True, False):
            rs = [r for r in results if (r["dataset"], r.get("tag", "")) == (dataset, tag)
                  and r["split_used_to_choose_the_defaults"] == chosen]
            if not rs:
                continue
            cells = []
            for name in names:
                w1 = np.mean([r[name]["W1"] / r["floor"]["W1"] for r in rs])
                mmd = [r[name]["MMD"] - r["gaussian"]["MMD"] for r in rs]
                cells.append(f"{w1:.3f}x, {np.mean(mmd):+.4f} ({sum(m < 0 for m in mmd)}/{len(rs)})")
            seeds = ", ".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
            lines.append(f"| {dataset}{tag} | {seeds}{' (chose)' if chosen else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    if sys.argv[1:] == ["--table"]:
        print(table())
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="pbmc_3tech")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--epochs", default="60", help='VAE epochs, or "product" (eval_generation.train_options)')
    p.add_argument("--model-dir", required=True)
    p.add_argument("--params", default="{}", help="the network over the fast one, JSON (as run_benchmarks.py --params)")
    p.add_argument("--tag", default="", help="suffix of the result file and of the table's set, for --params")
    args = p.parse_args()
    sys.path.insert(0, HERE)
    import eval_generation

    r = run(args.dataset, args.seed, eval_generation.epochs_arg(args.epochs), args.model_dir, json.loads(args.params), args.tag)
    path = os.path.join(HERE, "results", f"spread_variants_{args.dataset}_s{args.seed}{args.tag}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(r, fh, indent=1)
    os.replace(path + ".tmp", path)
    print(f"{args.dataset} s{args.seed}: floor {r['floor']['W1']:.3f} / {r['floor']['MMD']:.4f}, "
          f"Gaussian {r['gaussian']['W1']:.3f} / {r['gaussian']['MMD']:.4f}")
    eval_generation.print_scored_sets(r)


if __name__ == "__main__":
    main()
