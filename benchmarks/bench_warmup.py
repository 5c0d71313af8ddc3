"""Learning-rate warm-up (benchmark, not a test): how long should the lr ramp of each stage be?

    .venv/bin/python benchmarks/bench_warmup.py --data kang:B kang:CD14+Mono pbmc_3tech baron_human --warmup 2 15 40 100
    .venv/bin/python benchmarks/bench_warmup.py --stage flow --data kang:B --warmup 2 50 default
    .venv/bin/python benchmarks/bench_warmup.py            # redraw the plot and table from the results file

``train()`` ramps the lr linearly over its warm-up. With early stopping the VAE's run is much shorter
than ``max_epochs`` (the scvi-tools rule gives 400 epochs on small data; the VAE stops after 60-80), so
a warm-up counted as a quarter of ``max_epochs`` can outlast the whole run. This trains the VAE stage
only, with the product's defaults (fast network of the harness, 10% validation, early stopping) and
each warm-up, and records the best validation loss, where it was reached and what the lr was there.
``kang:TYPE`` is the perturbation split of the harness (the stimulated cells of TYPE left out).
``--stage flow`` varies the flow's warm-up instead: the whole default training, the VAE with its own
default warm-up, so each flow of a (data, seed) learns the same latents and the losses compare.

Appends to results/warmup.json (one row per stage, dataset, warm-up and seed; a rerun replaces its row) and
draws results/warmup.png (validation curves per stage and dataset, one line per warm-up).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_benchmarks as RB  # noqa: E402

RESULTS = os.path.join(os.environ.get("PYSAVE_BENCH_RESULTS", os.path.join(HERE, "results")), "warmup.json")


def training_data(spec: str):
    """The AnnData a ``--data`` entry names: a dataset, or ``kang:TYPE`` (TYPE's stimulated cells out)."""
    dataset, _, held = spec.partition(":")
    adata = RB.load(dataset)
    if held:
        adata = adata[~RB.held_out_cells(adata, dataset, held)].copy()
    return dataset, adata


def run(spec: str, warmup: int | None, seed: int, threads: int, stage: str = "vae") -> dict:
    """Train on ``spec`` with ``warmup`` for ``stage`` (None: train()'s default). For the flow, the
    VAE keeps its default warm-up, so every flow warm-up of a (data, seed) sees the same latents and
    its validation losses compare directly."""
    import torch

    import pysave
    import pysave.model as model_module

    torch.set_num_threads(threads)
    dataset, adata = training_data(spec)
    keys, batch_key = RB.condition_keys(dataset)
    pysave.SAVE.setup_anndata(adata, keys, batch_key=batch_key)
    model = pysave.SAVE(adata, seed=seed, verbose=False, **RB.FAST)
    real_fit = model_module.fit

    def fit(module, loss_fn, train_batches, val_batches, epochs, steps, lr, wd, ramp, *args, **kwargs):
        # the benchmark's only intervention: the flow stage's warm-up (train() has one argument for both)
        if warmup is not None and args[3] == "flow":
            ramp = warmup
        return real_fit(module, loss_fn, train_batches, val_batches, epochs, steps, lr, wd, ramp, *args, **kwargs)

    t0 = time.perf_counter()
    try:
        model_module.fit = fit
        if stage == "vae":
            model.train(flow_epochs=1, warmup_epochs=warmup, seed=seed, progress=False, device="cpu")
        else:
            model.train(seed=seed, progress=False, device="cpu")
    finally:
        model_module.fit = real_fit
    s = model.training_summary
    summary = s[stage]
    used = warmup if warmup is not None else s["warmup_epochs"][stage]
    curve = [float(x) for x in model.history[f"{stage}_validation_loss"]]
    best = summary["best_epoch"]
    return {"stage": stage, "data": spec, "warmup_epochs": used, "seed": seed,
            "rule": "train()'s default (warmup_epochs=None)" if warmup is None else "given",
            "steps_per_epoch": math.ceil(s["n_train"] / s["batch_size"]), "max_epochs": s[f"{'max' if stage == 'vae' else 'flow'}_epochs"],
            "lr": s["lr" if stage == "vae" else "flow_lr"], "best_epoch": best, "epochs_run": summary["epochs_run"],
            "best_validation_loss": float(min(curve)), "lr_fraction_at_best": min(1.0, best / used),
            "stage_seconds": summary["seconds"], "wall_s": time.perf_counter() - t0,
            "curve": curve, "date": time.strftime("%Y-%m-%d"), "threads": threads}


def load_rows() -> list[dict]:
    if not os.path.exists(RESULTS):
        return []
    with open(RESULTS) as fh:
        return json.load(fh)


def save_rows(rows: list[dict]) -> None:
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(rows, fh, indent=1)
    os.replace(tmp, RESULTS)


def table(rows: list[dict], stage: str) -> str:
    """Markdown: best validation loss of ``stage`` per dataset (rows) and warm-up (columns), epoch of the best in brackets."""
    rows = [r for r in rows if r["stage"] == stage]
    warmups = sorted({r["warmup_epochs"] for r in rows})
    lines = ["| data (steps/epoch) | " + " | ".join(f"warm-up {w}" for w in warmups) + " |",
             "|---|" + "---|" * len(warmups)]
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = {r["warmup_epochs"]: r for r in rows if r["data"] == data}
        first = next(iter(mine.values()))
        cells = []
        for w in warmups:
            r = mine.get(w)
            cells.append("-" if r is None else f"{r['best_validation_loss']:.{2 if stage == 'vae' else 4}f} (epoch {r['best_epoch']} of {r['epochs_run']})")
        lines.append(f"| {data} ({first['steps_per_epoch']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["stage"], r["data"]) for r in rows))
    warmups = sorted({r["warmup_epochs"] for r in rows})
    colour = {w: plt.cm.viridis(i / max(1, len(warmups) - 1)) for i, w in enumerate(warmups)}  # one colour per warm-up
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (stage, data) in zip(axes[0], panels):
        mine = [r for r in rows if (r["stage"], r["data"]) == (stage, data)]
        for r in sorted(mine, key=lambda r: r["warmup_epochs"]):
            c = np.asarray(r["curve"])
            col = colour[r["warmup_epochs"]]
            ax.plot(np.arange(1, len(c) + 1), c, lw=1, color=col, label=f"warm-up {r['warmup_epochs']}: best {c.min():.{1 if stage == 'vae' else 3}f}")
            ax.plot(r["best_epoch"], c.min(), "o", color=col, ms=4)
        lo = min(min(r["curve"]) for r in mine)
        hi = lo + (0.1 if stage == "vae" else 0.15) * abs(lo)  # the region around the minima
        ax.set_ylim(lo - 0.02 * (hi - lo), hi)
        ax.set_title(f"{data}: {stage.upper() if stage == 'vae' else stage}", fontsize=9)
        ax.set_xlabel(f"{stage.upper() if stage == 'vae' else stage} epoch")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="*", default=[], help="datasets, or kang:TYPE for a perturbation split")
    p.add_argument("--warmup", nargs="*", default=[], help='warm-up epochs; "default" for train()\'s own rule')
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--stage", choices=("vae", "flow"), default="vae",
                   help="whose warm-up varies; for the flow the VAE keeps its default")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rows = load_rows()
    for spec in args.data:
        for w in args.warmup:
            for seed in args.seeds:
                r = run(spec, None if w == "default" else int(w), seed, args.threads, args.stage)
                print(f"{args.stage} {spec} warm-up {r['warmup_epochs']} seed {seed}: best {r['best_validation_loss']:.4f} at epoch "
                      f"{r['best_epoch']} of {r['epochs_run']}, {r['stage_seconds']:.0f} s", flush=True)
                key = (args.stage, spec, r["warmup_epochs"], seed)
                rows = [x for x in load_rows() if (x["stage"], x["data"], x["warmup_epochs"], x["seed"]) != key] + [r]
                save_rows(rows)
    if rows:
        plot(rows, RESULTS.replace(".json", ".png"))
        for stage in dict.fromkeys(r["stage"] for r in rows):
            print(f"{stage}:\n{table(rows, stage)}")


if __name__ == "__main__":
    main()
