"""What the spread calibration's pilots cost a generation call (benchmark, not a test).

    .venv/bin/python benchmarks/spread_pilot_cost.py MODEL_DIR

Ten seen combinations (each with the spread's minimum of kept training cells) x 50 and x 500
cells, 1 thread: the first call on a freshly loaded model (pilots drawn), the same call again
(pilots kept, the same cells) and the call without calibration. Writes
results/spread_pilot_cost.json (benchmarks/README.md, "Spread calibration in the product").
"""
import json
import os
import platform
import sys
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
        print(f"{len(chosen)} combinations x {per_combination} cells: first call {first_s:.1f} s, pilots kept "
              f"{again_s:.1f} s, uncalibrated {plain_s:.1f} s")
    with open(os.path.join(HERE, "results", "spread_pilot_cost.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1])
