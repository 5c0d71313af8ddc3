"""bf16 against full-precision sampling on the same models (not a test).

    .venv/bin/python benchmarks/bench_precision.py --model-dir DIR [--dataset pbmc_3tech baron_human] [--seeds 0 1]

For each dataset and seed: the generation benchmark's split and model (eval_generation.run,
trained once and kept in --model-dir), then the test cells' condition combinations generated
twice from the same seed, once with precision="32" and once with "bf16" (the product's
defaults otherwise: w = 2, 10 midpoint steps, sampled counts), and both scored with the
generation protocol. Also: how far the bf16 latents are from the fp32 ones. Speed is measured
by bench_speed.py, not here. Results: results/precision.json and a table in README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import eval_generation as E
from readme_table import write_block

HERE = os.path.dirname(os.path.abspath(__file__))


def run(dataset: str, seed: int, model_dir: str, epochs: int) -> dict:
    train, test, keys, batch_key = E.split(dataset, seed)
    model, _ = E.trained_model(dataset, seed, epochs, E.FAST, train, keys, batch_key, model_dir)  # kept models are reused
    generated = {p: model.generate_like(test.obs[keys], seed=seed, precision=p) for p in ("32", "bf16")}
    # The sampled counts of two runs differ by their Poisson draws; the decoder means show the arithmetic.
    means = [model.generate_like(test.obs[keys], seed=seed, precision=p, output="mean").X for p in ("32", "bf16")]
    z32, z16 = generated["32"].obsm["X_save"], generated["bf16"].obsm["X_save"]
    scored = E.score(train[:, model.genes].copy(), test[:, model.genes].copy(), keys, seed, generated)
    return {"dataset": dataset, "seed": seed, "epochs": epochs, "n_cells": int(test.n_obs),
            "noise_floor": scored["noise_floor"], "gaussian_pca": scored["gaussian_pca"],
            "scores": {p: scored["outputs"][p]["pysave"] for p in generated},
            "latent_relative_difference": float(np.linalg.norm(z16 - z32) / np.linalg.norm(z32)),
            "decoder_mean_correlation": float(np.corrcoef(means[0].ravel(), means[1].ravel())[0, 1]),
            "decoder_mean_max_difference": float(np.abs(means[0] - means[1]).max())}


def render_table(runs: list[dict]) -> str:
    lines = ["| data | seed | cells | W1 floor | W1 fp32 / bf16 | MMD fp32 / bf16 | mean r2 fp32 / bf16 | "
             "bf16 latent vs fp32 (relative) | decoder mean: correlation, largest difference |", "|---" * 9 + "|"]
    for r in sorted(runs, key=lambda r: (r["dataset"], r["seed"])):
        a, b = r["scores"]["32"], r["scores"]["bf16"]
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['n_cells']} | {r['noise_floor']['W1']:.3f} | "
                     f"{a['W1']:.3f} / {b['W1']:.3f} | {a['MMD']:.4f} / {b['MMD']:.4f} | {a['mean_r2']:.4f} / {b['mean_r2']:.4f} | "
                     f"{r['latent_relative_difference']:.4f} | {r['decoder_mean_correlation']:.5f}, "
                     f"{r['decoder_mean_max_difference']:.3f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--dataset", nargs="+", default=["pbmc_3tech", "baron_human"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args()
    out = os.path.join(HERE, "results", "precision.json")
    runs = json.load(open(out))["runs"] if os.path.exists(out) else []
    for dataset in args.dataset:
        for seed in args.seeds:
            r = run(dataset, seed, args.model_dir, args.epochs)
            runs = [x for x in runs if (x["dataset"], x["seed"]) != (dataset, seed)] + [r]
            with open(out, "w") as fh:
                json.dump({"date": time.strftime("%Y-%m-%d"), "runs": runs}, fh, indent=1)
            s32, s16 = r["scores"]["32"], r["scores"]["bf16"]
            print(f"{dataset} s{seed}: W1 {s32['W1']:.3f} / {s16['W1']:.3f} (floor {r['noise_floor']['W1']:.3f}), "
                  f"MMD {s32['MMD']:.4f} / {s16['MMD']:.4f}, mean r2 {s32['mean_r2']:.4f} / {s16['mean_r2']:.4f}, "
                  f"latent diff {r['latent_relative_difference']:.4f}", flush=True)
    write_block("precision-table", render_table(runs))


if __name__ == "__main__":
    main()
