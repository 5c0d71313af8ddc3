"""Speed and memory benchmark (not a test): training and sampling throughput on 2 CPU cores.

    .venv/bin/python benchmarks/bench_speed.py [--peers-python benchmarks/peers-venv/bin/python]

Data: scVelo pancreas E15.5 (3,696 cells x 2,000 genes, raw counts) from ../shared/data.
Each configuration runs in its own process so that peak RSS is its own. Results go to
benchmarks/results/speed.json and the table in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "scvelo_pancreas_e15_supercell_3696.h5ad")
CONFIGS = {
    "paper": {},  # m=256, e=512, 3+3 layers, 32 blocks
    "fast": dict(n_blocks=16, hidden_size=128, condition_dim=256, n_encoder_layers=2, n_decoder_layers=2),
}
THREADS = 2
# (solver, steps, guidance w, output): the setting (50 Euler steps), the former default
# (Euler 50, w = 2, sampled counts) and the current one (midpoint 10, w = 2, sampled counts).
SAMPLING = [("euler", 50, 1.0, "mean"), ("euler", 50, 1.0, "sample"), ("euler", 50, 2.0, "sample"),
            ("midpoint", 10, 2.0, "sample"), ("midpoint", 10, 1.0, "mean")]


def run_config(name: str, epochs: int, n_sample: int) -> dict:
    import anndata as ad
    import torch

    import pysave

    torch.set_num_threads(THREADS)
    adata = ad.read_h5ad(DATA)
    pysave.SAVE.setup_anndata(adata, ["clusters"])
    model = pysave.SAVE(adata, verbose=False, **CONFIGS[name])
    model.train(max_epochs=epochs, flow_epochs=epochs, batch_size=256, validation_fraction=0.0, progress=False, device="cpu")
    s = model.training_summary
    result = {"config": name, "params": model.params, "n_cells": adata.n_obs, "n_genes": adata.n_vars,
              "epochs": epochs, "vae_train_cells_per_s": s["vae"]["cells_per_second"],
              "flow_train_cells_per_s": s["flow"]["cells_per_second"]}
    model.generate({"clusters": "Beta"}, n_cells=256)  # warm-up
    for solver, steps, guidance, output in SAMPLING:
        t = time.perf_counter()
        model.generate({"clusters": "Beta"}, n_cells=n_sample, n_steps=steps, solver=solver, guidance=guidance,
                       seed=1, output=output)
        result[f"sampling_cells_per_s_{solver}{steps}_w{guidance:g}_{output}"] = n_sample / (time.perf_counter() - t)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


SCVI_CODE = r"""
import json, resource, sys, time, anndata as ad, torch, scvi
torch.set_num_threads(%d)
adata = ad.read_h5ad(sys.argv[1])
scvi.model.SCVI.setup_anndata(adata, batch_key=None)
m = scvi.model.SCVI(adata)
t = time.perf_counter()
m.train(max_epochs=int(sys.argv[2]), accelerator="cpu", batch_size=256, train_size=1.0, enable_progress_bar=False)
dt = time.perf_counter() - t
print(json.dumps({"config": "scvi", "version": scvi.__version__, "epochs": int(sys.argv[2]),
                  "vae_train_cells_per_s": adata.n_obs * int(sys.argv[2]) / dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % THREADS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-sample", type=int, default=4096)
    parser.add_argument("--peers-python", default=os.path.join(HERE, "peers-venv", "bin", "python"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_config(args.one, args.epochs, args.n_sample)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    results = []
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--epochs", str(args.epochs), "--n-sample", str(args.n_sample)],
                             capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    if os.path.exists(args.peers_python):
        out = subprocess.run([args.peers_python, "-c", SCVI_CODE, DATA, str(max(args.epochs, 5))],
                             capture_output=True, text=True, env=env)
        if out.returncode == 0:
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
        else:
            print("scVI run failed:", out.stderr[-2000:], file=sys.stderr)
    else:
        print(f"scvi-tools not found at {args.peers_python}; see benchmarks/README.md to install the peers", file=sys.stderr)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": THREADS, "data": os.path.basename(DATA),
            "targets": {"sampling_cells_per_s": 5000, "vae_train_vs_scvi": 0.5}}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "speed.json"), "w") as fh:
        json.dump({"meta": meta, "results": results}, fh, indent=1)
    write_table(results, meta)


def write_table(results: list[dict], meta: dict) -> None:
    scvi = next((r for r in results if r["config"] == "scvi"), None)
    sampling = [f"sampling_cells_per_s_{solver}{steps}_w{w:g}_{out}" for solver, steps, w, out in SAMPLING]
    lines = ["| config | VAE train cells/s | vs scVI | flow train cells/s | "
             + " | ".join(f"sampling cells/s: {solver} {steps} steps, w={w:g}, {out}" for solver, steps, w, out in SAMPLING)
             + " | peak RSS MB |", "|---" * (5 + len(SAMPLING)) + "|"]
    for r in results:
        ratio = f"{r['vae_train_cells_per_s'] / scvi['vae_train_cells_per_s']:.2f}x" if scvi else "n/a"
        lines.append(f"| {r['config']} | {r['vae_train_cells_per_s']:.0f} | {ratio if r['config'] != 'scvi' else '1.00x'} | "
                     f"{r.get('flow_train_cells_per_s', float('nan')):.0f} | "
                     + " | ".join(f"{r.get(k, float('nan')):.0f}" for k in sampling) + f" | {r['peak_rss_mb']:.0f} |")
    table = "\n".join(lines)
    readme = os.path.join(HERE, "README.md")
    text = open(readme).read() if os.path.exists(readme) else ""
    start, end = "<!-- speed-table -->", "<!-- /speed-table -->"
    block = f"{start}\nMeasured {meta['date']} on {meta['cpu_count']} CPU cores ({meta['threads']} threads), {meta['data']}:\n\n{table}\n{end}"
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    with open(readme, "w") as fh:
        fh.write(text)
    print(table)


if __name__ == "__main__":
    main()
