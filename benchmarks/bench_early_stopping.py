"""Early-stopping patience (benchmark, not a test): when would each rule stop, and what is lost.

    .venv/bin/python benchmarks/bench_early_stopping.py --dataset pbmc_3tech kang --lr 1e-4   # trains, ~16-25 min each
    .venv/bin/python benchmarks/bench_early_stopping.py --models 'DIR/*'              # kept model folders only
    .venv/bin/python benchmarks/bench_early_stopping.py                               # redraw the plot

Trains with the product's training defaults (``max_epochs`` by the scvi-tools rule, i.e. 400 on
these small datasets, the default VAE lr unless ``--lr``, the default warm-up (the recorded runs: a
quarter of the epochs, the default then), 10% validation) but with early stopping switched off, so
that the whole validation curve of both stages is recorded. Training is deterministic, so stopping
with patience P is the same run cut where P epochs have passed without a new best: the rule's
stopping epoch, the epoch it restores, and how much higher that epoch's validation loss is than the
best of the whole run can all be read off the one curve. The harness's fast network is used (the
paper-sized one trains 6x slower on 2 cores); its curves have the same shape. ``--models`` reads
the curves stored in model folders instead (``run_benchmarks.py --model-dir`` keeps them).

Writes results/early_stopping.json and results/early_stopping.png (the validation curves with the
best epoch and where each rule stops).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_benchmarks as RB  # noqa: E402

PATIENCES = (10, 20, 30, 50)
DATASETS = ("baron_human", "kang", "pbmc_3tech")  # the ones this benchmark was run on


def cut(curve, patience: int) -> tuple[int, int]:
    """(epoch at which a patience of ``patience`` epochs stops, epoch it restores); 1-based, as
    pysave.train.fit counts them."""
    best = 0
    for epoch in range(1, len(curve)):
        if curve[epoch] < curve[best]:
            best = epoch
        elif epoch - best >= patience:
            return epoch + 1, best + 1
    return len(curve), best + 1


# The flow's rule this benchmark chose on 2026-11-22: the patience, but at least this many optimizer
# steps. The product dropped it on 2026-12-06 (the flow now runs all its epochs and keeps the last).
MIN_FLOW_PATIENCE_STEPS = 1000


def flow_patience_epochs(patience: int, steps_per_epoch: int) -> int:
    return max(patience, math.ceil(MIN_FLOW_PATIENCE_STEPS / steps_per_epoch))


def analyse(name: str, history: dict, steps_per_epoch: int, seconds: dict | None = None) -> dict:
    """For each stage: the best epoch of the whole curve and, for each patience, where it stops."""
    out = {"name": name, "steps_per_epoch": steps_per_epoch, "stages": {}}
    for stage in ("vae", "flow"):
        curve = np.asarray(history.get(f"{stage}_validation_loss", []), dtype=float)
        if not len(curve):
            continue
        best = int(curve.argmin())
        rules = {f"P{p}": p for p in PATIENCES}
        floor = flow_patience_epochs(20, steps_per_epoch)  # the product's rule for the flow until 2026-12-06
        rules[f"P20, at least {MIN_FLOW_PATIENCE_STEPS} steps ({floor} epochs)"] = floor
        stage_out = {"epochs": len(curve), "best_epoch": best + 1, "best_loss": float(curve[best]), "rules": {}}
        per_epoch = (seconds or {}).get(stage, float("nan")) / len(curve)
        for label, patience in rules.items():
            stop, restored = cut(curve, patience)
            stage_out["rules"][label] = {
                "patience_epochs": patience, "stops_at": stop, "restores": restored,
                "loss_above_best_pct": float(100 * (curve[restored - 1] - curve[best]) / abs(curve[best])),
                "seconds_saved": float((len(curve) - stop) * per_epoch)}
        out["stages"][stage] = stage_out
    return out


def train_curves(dataset: str, seed: int, threads: int, lr: float | None) -> dict:
    import torch

    import pysave

    torch.set_num_threads(threads)
    adata = RB.load(dataset)
    keys, batch_key = RB.condition_keys(dataset)
    pysave.SAVE.setup_anndata(adata, keys, batch_key=batch_key)
    model = pysave.SAVE(adata, seed=seed, verbose=False, **RB.FAST)
    t0 = time.perf_counter()
    model.train(early_stopping=False, seed=seed, progress=False, device="cpu", **({} if lr is None else {"lr": lr}))
    wall = time.perf_counter() - t0
    s = model.training_summary
    result = analyse(f"{dataset} s{seed} (trained here)", model.history, math.ceil(s["n_train"] / s["batch_size"]),
                     {"vae": s["vae"]["seconds"], "flow": s["flow"]["seconds"]})
    result.update(dataset=dataset, seed=seed, n_cells=adata.n_obs, wall_s=wall, network="fast (run_benchmarks.FAST)", lr=s["lr"],
                  curves={k: v for k, v in model.history.items() if k.endswith("validation_loss")})
    return result


def from_model(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as fh:
        config = json.load(fh)
    training = config["training"]
    steps = math.ceil(training["n_train"] / training["batch_size"])
    return analyse(os.path.basename(path.rstrip("/")), config["history"], steps)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in results if "curves" in r]
    if not trained:
        return
    fig, axes = plt.subplots(len(trained), 2, figsize=(10, 3.2 * len(trained)), squeeze=False)
    for row, r in zip(axes, trained):
        for ax, stage in zip(row, ("vae", "flow")):
            curve = r["curves"].get(f"{stage}_validation_loss")
            if not curve:
                continue
            st = r["stages"][stage]
            ax.plot(np.arange(1, len(curve) + 1), curve, lw=1, color="0.3")
            ax.axvline(st["best_epoch"], color="tab:green", ls="--", lw=1, label=f"best epoch {st['best_epoch']}")
            shown = {"P20": "20 epochs" + (" (the VAE's rule)" if stage == "vae" else ""),
                     "floor": ("the flow's rule; the VAE's before" if stage == "vae" else "the flow's rule")}
            for label, rule in st["rules"].items():
                key = "floor" if "steps" in label else label
                if key in shown:
                    ax.axvline(rule["stops_at"], color="tab:blue" if key == "floor" else "tab:red", lw=1,
                               label=f"{label} ({shown[key]}): stops at {rule['stops_at']}")
            lo, hi = np.percentile(curve, [0, 90])
            ax.set_ylim(lo - 0.05 * (hi - lo), hi)
            ax.set_title(f"{r['name']}: {stage}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation loss")
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", nargs="*", default=[], choices=DATASETS)
    p.add_argument("--models", nargs="*", default=[], help="model folders whose stored curves to read (globs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="VAE learning rate (default: train()'s; the recorded runs: 1e-4)")
    p.add_argument("--out", default=os.path.join(RB.RESULTS, "early_stopping.json"))
    args = p.parse_args()
    results = [train_curves(d, args.seed, args.threads, args.lr) for d in args.dataset]
    results += [from_model(folder) for pattern in args.models for folder in sorted(glob.glob(pattern))]
    if os.path.exists(args.out):  # keep earlier entries of other runs
        with open(args.out) as fh:
            names = {r["name"] for r in results}
            results = [r for r in json.load(fh) if r["name"] not in names] + results
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(tmp, args.out)
    plot(results, os.path.splitext(args.out)[0] + ".png")
    for r in results:
        for stage, st in r["stages"].items():
            rules = "; ".join(f"{k}: stop {v['stops_at']}, restores {v['restores']} (+{v['loss_above_best_pct']:.2f}%)"
                              for k, v in st["rules"].items())
            print(f"{r['name']} {stage}: {st['epochs']} epochs, best {st['best_epoch']}; {rules}")


if __name__ == "__main__":
    main()
