"""How fast generation's sampled counts are drawn, by thread count (benchmark, not a test).

    .venv/bin/python benchmarks/bench_count_draws.py [--label NAME] [--cells 4096] [--repeats 5] [--tile K]

``pysave.data.sample_counts`` alone (no network): 4,096 cells x 2,000 genes of scVelo pancreas
(``../shared/data``), each cell's mean being a real cell's log1p(CP10k) profile, rates by the
log-mean inversion (the default decoder's) and, second, with the negative binomial's Gamma part
(theta 2 for every gene). Best of ``--repeats`` per thread count, from 1 to the CPU count
(``data.SAMPLE_WORKERS``, and torch's thread count with it: since 2026-12-07, second session, the
draws use no more threads than torch does; no network runs). It also runs on code from before the count
draws had one stream per run of cells (2026-12-07), whose ``sample_counts`` took the streams
themselves, so the same script times both. ``--tile K`` repeats the genes K times (each profile
divided by K, so 15 gives 30,000 genes of atlas width). Each row also has the call's peak memory
as tracemalloc counts numpy's allocations (one more call, traced), output included. Writes
results/count_draws_<label>.json (benchmarks/README.md, "Count draws on several threads").
"""
from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc

import anndata as ad
import numpy as np

import pysave.data as D
from pysave.io import atomic_output
from provenance import run_provenance

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "scvelo_pancreas_e15_supercell_3696.h5ad")


def real_means(n_cells: int, tile: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """n_cells real log1p(CP10k) profiles (drawn with replacement) and their log library sizes;
    ``tile`` > 1 repeats the genes that many times, each copy carrying 1/tile of the profile."""
    adata = ad.read_h5ad(DATA)
    counts = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float64)
    library = counts.sum(1)
    rows = np.random.default_rng(0).choice(len(counts), n_cells)
    profile = np.tile(counts[rows] / library[rows, None] * D.TARGET_SUM / tile, (1, tile))
    return np.log1p(profile).astype(np.float32), np.log(library[rows])


def draw(lognorm, log_lib, theta, rates: str):
    """One call as the product makes it, on this code's or the older code's signature."""
    sd = np.full(len(lognorm), 0.3)
    if hasattr(D, "CountStreams"):
        return D.sample_counts(lognorm, log_lib, sd, np.random.default_rng(1), D.CountStreams(2), theta, rates=rates)
    return D.sample_counts(lognorm, log_lib, sd, np.random.default_rng(1), np.random.default_rng(2), theta,
                           np.random.default_rng(3), rates=rates)


def seconds_by_threads(lognorm, log_lib, theta, threads, repeats: int) -> tuple[dict[int, list[float]], dict[int, float]]:
    """{threads: the seconds of each of ``repeats`` calls} and {threads: a traced call's peak MB},
    with ``data.SAMPLE_WORKERS`` and torch's thread count (which bounds the draws) set to each of
    ``threads`` (both restored after); the log-mean table is built before the timing."""
    import torch

    from pysave.metrics import torch_threads_kept

    draw(lognorm[:256], log_lib[:256], theta, "log_mean")
    default, seconds, peak_mb = D.SAMPLE_WORKERS, {}, {}
    try:
        with torch_threads_kept():
            for workers in threads:
                D.SAMPLE_WORKERS = workers
                torch.set_num_threads(workers)
                seconds[workers] = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    draw(lognorm, log_lib, theta, "log_mean")
                    seconds[workers].append(time.perf_counter() - start)
                tracemalloc.start()
                try:
                    draw(lognorm, log_lib, theta, "log_mean")
                    peak_mb[workers] = tracemalloc.get_traced_memory()[1] / 2 ** 20
                finally:
                    tracemalloc.stop()
    finally:
        D.SAMPLE_WORKERS = default
    return seconds, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="current", help="names the results file: results/count_draws_LABEL.json")
    parser.add_argument("--cells", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=1, help="repeat the genes this many times (15: 30,000 genes)")
    args = parser.parse_args()
    lognorm, log_lib = real_means(args.cells, args.tile)
    result = {"provenance": run_provenance(), "cells": args.cells, "genes": lognorm.shape[1], "output_mb": lognorm.nbytes / 2 ** 20,
              "per_run_streams": hasattr(D, "CountStreams"), "repeats": args.repeats, "rows": []}
    for name, theta in (("poisson", None), ("negative binomial, theta 2", np.full(lognorm.shape[1], 2.0))):
        timed, peak_mb = seconds_by_threads(lognorm, log_lib, theta, range(1, (os.cpu_count() or 1) + 1), args.repeats)
        for workers, times in timed.items():
            row = {"counts": name, "threads": workers, "cells_per_s_best": args.cells / min(times),
                   "cells_per_s_each": [args.cells / t for t in times], "peak_traced_mb": peak_mb[workers]}
            result["rows"].append(row)
            print(f"{name}, {workers} thread(s): {row['cells_per_s_best']:,.0f} cells/s (best of {args.repeats}), "
                  f"peak {row['peak_traced_mb']:,.0f} MB (output {result['output_mb']:,.0f} MB)", flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"count_draws_{args.label}.json")
    with atomic_output(path) as tmp, open(tmp, "w") as fh:  # a stopped run leaves the earlier file as it was
        json.dump(result, fh, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
