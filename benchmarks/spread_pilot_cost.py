"""What the spread calibration's pilots cost a generation call (benchmark, not a test).

    .venv/bin/python benchmarks/spread_pilot_cost.py MODEL_DIR

Ten seen combinations (each with the spread's minimum of kept training cells) x 50 and x 500
cells, 1 thread: the first call on a freshly loaded model (pilots drawn), the same call again
(pilots kept, the same cells) and the call without calibration. Then what training now adds:
``_train_spread_pilots`` (the default settings' pilots train() draws) timed on the loaded model
against the model's own training time, and the first call after saving and loading it. Writes
results/spread_pilot_cost.json (benchmarks/README.md, "Spread calibration in the product",
"Spread pilots drawn by training"). Give a model directory saved without pilots.
"""
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

import pysave
from pysave.calibration import training_pc_variances

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(call):
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def main(model_dir: str) -> dict:
    torch.set_num_threads(1)
    model = pysave.SAVE.load(model_dir, verbose=False, device="cpu")
    stats, keys, cats = model.condition_latents, model.registry["condition_keys"], model.registry["categories"]
    chosen = sorted(training_pc_variances(stats))[:10]
    rows = [{k: cats[k][int(stats["codes"][j][i])] for i, k in enumerate(keys)} for j in chosen]
    result = {"model_dir": model_dir, "cpu": platform.processor() or platform.machine(), "threads": 1, "runs": []}
    for per_combination in (50, 500):
        table = pd.DataFrame(rows).assign(n_cells=per_combination)
        fresh = pysave.SAVE.load(model_dir, verbose=False, device="cpu")
        first, first_s = timed(lambda: fresh.generate_like(table, seed=0))
        again, again_s = timed(lambda: fresh.generate_like(table, seed=0))
        _, plain_s = timed(lambda: fresh.generate_like(table, seed=0, calibrate=False))
        run = {"combinations": len(chosen), "cells_per_combination": per_combination, "first_call_s": first_s,
               "pilots_kept_s": again_s, "uncalibrated_s": plain_s, "same_cells": bool(np.array_equal(first.X, again.X)),
               "spread_calibrated_cells": int(first.uns["pysave"]["spread_calibrated_cells"])}
        result["runs"].append(run)
        if per_combination == 50:
            first_small = first
        print(f"{len(chosen)} combinations x {per_combination} cells: first call {first_s:.1f} s, pilots kept "
              f"{again_s:.1f} s, uncalibrated {plain_s:.1f} s")
    # What train() now adds, and what it saves the first call.
    fresh = pysave.SAVE.load(model_dir, verbose=False, device="cpu")
    if fresh._spread_pilots:
        raise SystemExit(f"{model_dir} already keeps spread pilots; give a model directory saved before 2026-12-06 (eighth session)")
    drawn, train_s = timed(fresh._train_spread_pilots)
    with tempfile.TemporaryDirectory() as tmp:
        fresh.save(os.path.join(tmp, "m"))
        kept = pysave.SAVE.load(os.path.join(tmp, "m"), verbose=False, device="cpu")
    table = pd.DataFrame(rows).assign(n_cells=50)
    after, after_s = timed(lambda: kept.generate_like(table, seed=0))
    summary = fresh.training_summary
    trained_s = summary["vae"]["seconds"] + summary["flow"]["seconds"]
    result["training"] = {"pilots_drawn": drawn, "pilots_s": train_s, "model_training_s": trained_s,
                          "first_call_after_load_s": after_s, "cells_per_combination": 50,
                          "same_cells_as_drawn_at_the_call": bool(np.array_equal(after.X, first_small.X))}
    print(f"train(): {drawn} pilots in {train_s:.1f} s (the model trained in {trained_s:.0f} s); first call for "
          f"{len(chosen)} x 50 cells after loading: {after_s:.1f} s")
    with open(os.path.join(HERE, "results", "spread_pilot_cost.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1])
