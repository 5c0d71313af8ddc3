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

from provenance import cpu_description, run_provenance
from readme_table import write_block

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.path.join(HERE, "..", "..", "shared", "data")
DATA = os.path.join(SHARED_DATA, "scvelo_pancreas_e15_supercell_3696.h5ad")
# `--training --dataset`: the data of the VAE training comparison, its pysave conditions, scVI's
# batch key and the measured epochs (~11,000-12,000 cells per run). Issue 4 states its speed target
# on pbmc_3tech.
TRAINING_DATA = {
    "pancreas": {"file": DATA, "conditions": ["clusters"], "scvi_batch_key": None, "epochs": 3,
                 "results": "speed_training.json", "table": "speed-training-table"},
    "pbmc_3tech": {"file": os.path.join(SHARED_DATA, "pbmc_3tech_symphony_1200.h5ad"), "conditions": ["batch", "cell_type"],
                   "scvi_batch_key": "batch", "epochs": 10,
                   "results": "speed_training_pbmc_3tech.json", "table": "speed-training-table-pbmc_3tech"},
}
CONFIGS = {
    "paper": {},  # m=256, e=512, 3+3 layers, 32 blocks
    "fast": dict(n_blocks=16, hidden_size=128, condition_dim=256, n_encoder_layers=2, n_decoder_layers=2),
}
THREADS = 2
# (solver, steps, guidance w, output, precision): the setting (50 Euler steps), the former
# default (Euler 50, w = 2, sampled counts) and the current one (midpoint 10, w = 2, sampled
# counts), in full precision and in bf16 (a CPU with native bf16 is needed for bf16 to pay).
SAMPLING = [("euler", 50, 1.0, "mean", "32"), ("euler", 50, 1.0, "sample", "32"), ("euler", 50, 2.0, "sample", "32"),
            ("midpoint", 10, 2.0, "sample", "32"), ("midpoint", 10, 1.0, "mean", "32"),
            ("euler", 50, 1.0, "mean", "bf16"), ("midpoint", 10, 2.0, "sample", "bf16")]
REPEATS = 3  # sampling rows: the best of 3 (this shared 2-core machine's speed varies by up to 1.5x)


# VAE training of the fast network in each precision, eager and compiled (`--training`): one
# process per run, a 1-epoch warm-up run first (it pays torch.compile's compilation), then the
# measured run; the rounds alternate the settings, and the best round is kept.
TRAINING = [("32", False), ("bf16", False), ("bf16", True)]
TRAINING_ROUNDS = 3


def sampling_key(solver, steps, guidance, output, precision) -> str:
    return f"sampling_cells_per_s_{solver}{steps}_w{guidance:g}_{output}" + ("" if precision == "32" else f"_{precision}")


def gemm_rate(dtype, threads: int = THREADS) -> float:
    """This CPU's best matrix-multiply rate (GFLOP/s) over shapes of these networks' layers."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in ((8192, 128, 512), (8192, 256, 1024), (4096, 1024, 1024)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 2 * m * k * n * 10 / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_cell(model, adata) -> dict:
    """Floating-point operations per cell (torch's FlopCounterMode: matrix products, which are all
    but a few percent of the work): a VAE and a flow training step (forward + backward), one flow
    pass and one decoding at sampling time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pysave import loader

    n = 256
    x, codes, _ = next(iter(loader.contiguous_batches(model._prepare(adata[:n].copy()), n, torch.device("cpu"))))

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / n

    z = torch.randn(n, model.params["latent_dim"])
    return {
        "vae_train_step": count(lambda: model.vae.loss(x, codes, kl_weight=0.05)["loss"].backward()),
        "flow_train_step": count(lambda: model.flow.loss(z, codes, 0.6).backward()),
        "flow_pass": count(lambda: model.flow(z, torch.full((n,), 0.5), codes).detach()),
        "decode": count(lambda: model.vae.decode_mean(z, codes).detach()),
    }


def ceilings(flops: dict, gflops: float) -> dict:
    """The most cells/s any implementation of these networks reaches at ``gflops`` (GEMM peak)."""
    rate = gflops * 1e9
    return {"vae_train": rate / flops["vae_train_step"], "flow_train": rate / flops["flow_train_step"],
            "sampling_euler50_w1": rate / (50 * flops["flow_pass"] + flops["decode"]),
            "sampling_midpoint10_w2": rate / (40 * flops["flow_pass"] + flops["decode"])}


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
    for solver, steps, guidance, output, precision in SAMPLING:
        best = 0.0
        for _ in range(REPEATS):
            t = time.perf_counter()
            model.generate({"clusters": "Beta"}, n_cells=n_sample, n_steps=steps, solver=solver, guidance=guidance,
                           seed=1, output=output, precision=precision)
            best = max(best, n_sample / (time.perf_counter() - t))
        result[sampling_key(solver, steps, guidance, output, precision)] = best
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["flops_per_cell"] = flops_per_cell(model, adata)
    return result


def run_training(precision: str, torch_compile: bool, epochs: int, dataset: str = "pancreas", threads: int = THREADS,
                 params: dict | None = None) -> dict:
    import anndata as ad
    import torch

    import pysave

    torch.set_num_threads(threads)
    data = TRAINING_DATA[dataset]
    adata = ad.read_h5ad(data["file"])
    pysave.SAVE.setup_anndata(adata, data["conditions"])

    def train(n_epochs):
        model = pysave.SAVE(adata, verbose=False, **{**CONFIGS["fast"], **(params or {})})
        model.train(max_epochs=n_epochs, flow_epochs=1, batch_size=256, validation_fraction=0.0, progress=False,
                    device="cpu", precision=precision, torch_compile=torch_compile)
        return model.training_summary["vae"]

    warm = train(1)
    measured = train(epochs)
    return {"precision": precision, "torch_compile": torch_compile, "epochs": epochs,
            "warmup_epoch_seconds": warm["seconds"], "vae_train_cells_per_s": measured["cells_per_second"]}


def training_outputs(dataset: str, threads: int, label: str = "") -> tuple[str, str]:
    """The results file and README block of a `--training` comparison (suffixed unless 2 threads,
    and by ``label``: another machine's run then sits beside the stored one)."""
    data = TRAINING_DATA[dataset]
    suffix = ("" if threads == THREADS else f"_{threads}thread") + (f"_{label}" if label else "")
    return data["results"].replace(".json", suffix + ".json"), data["table"] + suffix


def training_main(epochs: int, peers_python: str, env: dict, dataset: str = "pancreas", threads: int = THREADS,
                  label: str = "", params: dict | None = None) -> None:
    data = TRAINING_DATA[dataset]
    results_name, table = training_outputs(dataset, threads, label)
    provenance = run_provenance()  # before the runs: the commit of the code they load
    rounds: list[dict] = []
    for r in range(TRAINING_ROUNDS):
        for precision, torch_compile in TRAINING:
            out = subprocess.run([sys.executable, __file__, "--one-training", f"{precision},{int(torch_compile)}",
                                  "--epochs", str(epochs), "--dataset", dataset, "--threads", str(threads),
                                  "--params", json.dumps(params or {})],
                                 capture_output=True, text=True, env=env, check=True)
            rounds.append({"round": r, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(rounds[-1], flush=True)
        scvi = run_scvi(peers_python, epochs, env, data["file"], data["scvi_batch_key"], threads)
        if scvi is not None:
            rounds.append({"round": r, "precision": "scvi", "torch_compile": False, **scvi})
            print(rounds[-1], flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(provenance["cpu"]), "provenance": provenance, "cpu_count": os.cpu_count(), "threads": threads,
            "data": os.path.basename(data["file"]), "conditions": data["conditions"],
            "scvi_batch_key": data["scvi_batch_key"], "rounds": TRAINING_ROUNDS, "epochs": epochs,
            "params": params or {}}
    write_results(results_name, {"meta": meta, "runs": rounds})
    write_training_table(rounds, meta, table)


def on_cpu(meta: dict) -> str:
    """The " of <CPU>" of a table's header, described from the recorded /proc/cpuinfo fields where the
    results have them; results written before the CPU was recorded have none."""
    cpu = meta.get("provenance", {}).get("cpu")
    description = cpu_description(cpu) if cpu else meta.get("cpu")
    return f" of {description}" if description else ""


def write_training_table(rounds: list[dict], meta: dict, block: str = "speed-training-table") -> None:
    scvi = {r["round"]: r["vae_train_cells_per_s"] for r in rounds if r["precision"] == "scvi"}
    settings = TRAINING + ([("scvi", False)] if scvi else [])
    network = "".join(f" {k}={v}" for k, v in meta.get("params", {}).items())
    lines = ["| VAE training | cells/s, best of rounds | each round | vs scVI: best / best | vs scVI in the same round | "
             "warm-up epoch, s (median) |", "|---|---|---|---|---|---|"]
    for precision, torch_compile in settings:
        runs = [r for r in rounds if r["precision"] == precision and r["torch_compile"] == torch_compile]
        rates = [r["vae_train_cells_per_s"] for r in runs]
        name = "scVI (scvi-tools)" if precision == "scvi" else (f"pysave fast{network}, {precision}"
                                                                + (", torch.compile" if torch_compile else ""))
        warm = sorted(r["warmup_epoch_seconds"] for r in runs if "warmup_epoch_seconds" in r)
        paired = [r["vae_train_cells_per_s"] / scvi[r["round"]] for r in runs if r["round"] in scvi]
        lines.append(f"| {name} | {max(rates):.0f} | {', '.join(f'{x:.0f}' for x in rates)} | "
                     + (f"{max(rates) / max(scvi.values()):.2f}x" if scvi else "n/a") + " | "
                     + (", ".join(f"{x:.2f}x" for x in paired) if paired else "n/a") + " | "
                     + (f"{warm[len(warm) // 2]:.1f}" if warm else "-") + " |")
    table = "\n".join(lines)
    write_block(block, f"Measured {meta['date']} on {meta['cpu_count']} CPU cores{on_cpu(meta)} ({meta['threads']} thread{'s' if meta['threads'] != 1 else ''}), "
                                        f"{meta['data']}, {meta['epochs']} epochs per measured run, {meta['rounds']} rounds:\n\n{table}")
    print(table)


SCVI_CODE = r"""
import json, resource, sys, time, anndata as ad, torch, scvi
torch.set_num_threads(int(sys.argv[4]))
adata = ad.read_h5ad(sys.argv[1])
scvi.model.SCVI.setup_anndata(adata, batch_key=sys.argv[3] or None)
m = scvi.model.SCVI(adata)
t = time.perf_counter()
m.train(max_epochs=int(sys.argv[2]), accelerator="cpu", batch_size=256, train_size=1.0, enable_progress_bar=False)
dt = time.perf_counter() - t
print(json.dumps({"config": "scvi", "version": scvi.__version__, "epochs": int(sys.argv[2]),
                  "vae_train_cells_per_s": adata.n_obs * int(sys.argv[2]) / dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_scvi(peers_python: str, epochs: int, env: dict, data: str = DATA, batch_key: str | None = None,
             threads: int = THREADS) -> dict | None:
    """scVI's training throughput from the peers' venv (at least 5 epochs), or None, said why."""
    if not os.path.exists(peers_python):
        print(f"scvi-tools not found at {peers_python}; see benchmarks/README.md to install the peers", file=sys.stderr)
        return None
    out = subprocess.run([peers_python, "-c", SCVI_CODE, data, str(max(epochs, 5)), batch_key or "", str(threads)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print("scVI run failed:", out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_results(name: str, content: dict) -> None:
    """results/NAME, written atomically: a stopped run leaves the earlier file as it was."""
    from pysave.io import atomic_output

    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with atomic_output(os.path.join(HERE, "results", name)) as tmp, open(tmp, "w") as fh:
        json.dump(content, fh, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="measured epochs (default 3; with --training, the dataset's: 3 pancreas, 10 pbmc_3tech)")
    parser.add_argument("--dataset", choices=sorted(TRAINING_DATA), default="pancreas",
                        help="with --training / --training-table: the data of the VAE training comparison")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="with --training / --training-table: torch threads (default 2; results and table suffixed otherwise)")
    parser.add_argument("--n-sample", type=int, default=4096)
    parser.add_argument("--peers-python", default=os.path.join(HERE, "peers-venv", "bin", "python"))
    parser.add_argument("--training", action="store_true",
                        help="only VAE training: fp32, bf16 and bf16 with torch.compile, against scVI -> results/speed_training*.json")
    parser.add_argument("--training-table", action="store_true", help="rewrite the --training table from its results file")
    parser.add_argument("--label", default="", help="suffix of the results file and README block (e.g. a machine, amd), "
                        "so a run elsewhere does not replace the stored one")
    parser.add_argument("--params", type=json.loads, default={},
                        help="with --training: network parameters over the fast set, JSON (e.g. '{\"latent_token_size\": 128}'); "
                        "needs --label, so the stored comparison is kept")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-training", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = TRAINING_DATA[args.dataset]["epochs"] if args.training else 3
    if args.one:
        print(json.dumps(run_config(args.one, args.epochs, args.n_sample)))
        return
    if args.one_training:
        precision, torch_compile = args.one_training.split(",")
        print(json.dumps(run_training(precision, torch_compile == "1", args.epochs, args.dataset, args.threads, args.params)))
        return
    threads = args.threads if args.training else THREADS
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if args.params and not args.training:
        parser.error("--params applies to --training only (the sampling table compares the paper and fast networks)")
    if args.params and not args.label:
        parser.error("--params changes the network: name the run with --label (e.g. --label lt128), "
                     "so the stored comparison of the fast network is kept")
    if args.training:
        training_main(args.epochs, args.peers_python, env, args.dataset, threads, args.label, args.params)
        return
    if args.training_table:  # rewrite the table from the stored results
        results_name, table = training_outputs(args.dataset, args.threads, args.label)
        stored = json.load(open(os.path.join(HERE, "results", results_name)))
        write_training_table(stored["runs"], stored["meta"], table)
        return
    provenance = run_provenance()  # before the runs: the commit of the code they load
    results = []
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--epochs", str(args.epochs), "--n-sample", str(args.n_sample)],
                             capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    scvi = run_scvi(args.peers_python, args.epochs, env)
    if scvi is not None:
        results.append(scvi)
        print(results[-1], flush=True)
    import torch

    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "cpu": cpu_description(provenance["cpu"]),
            "provenance": provenance, "cpu_count": os.cpu_count(), "threads": THREADS, "data": os.path.basename(DATA),
            "targets": {"sampling_cells_per_s": 5000, "vae_train_vs_scvi": 0.5},
            "gemm_gflops": {"32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}}
    for r in results:
        if "flops_per_cell" in r:
            r["ceiling_cells_per_s"] = {p: ceilings(r["flops_per_cell"], g) for p, g in meta["gemm_gflops"].items()}
    suffix = f"_{args.label}" if args.label else ""
    write_results(f"speed{suffix}.json", {"meta": meta, "results": results})
    write_table(results, meta, "speed-table" + suffix)


def write_table(results: list[dict], meta: dict, block: str = "speed-table") -> None:
    scvi = next((r for r in results if r["config"] == "scvi"), None)
    sampling = [sampling_key(*row) for row in SAMPLING]
    lines = ["| config | VAE train cells/s | vs scVI | flow train cells/s | "
             + " | ".join(f"sampling cells/s: {solver} {steps} steps, w={w:g}, {out}" + ("" if prec == "32" else f", {prec}")
                          for solver, steps, w, out, prec in SAMPLING)
             + " | peak RSS MB |", "|---" * (5 + len(SAMPLING)) + "|"]
    for r in results:
        ratio = f"{r['vae_train_cells_per_s'] / scvi['vae_train_cells_per_s']:.2f}x" if scvi else "n/a"
        lines.append(f"| {r['config']} | {r['vae_train_cells_per_s']:.0f} | {ratio if r['config'] != 'scvi' else '1.00x'} | "
                     f"{r.get('flow_train_cells_per_s', float('nan')):.0f} | "
                     + " | ".join(f"{r.get(k, float('nan')):.0f}" for k in sampling) + f" | {r['peak_rss_mb']:.0f} |")
    gemm = meta.get("gemm_gflops")
    if gemm:  # the ceiling: every matrix product at this CPU's best GEMM rate, nothing else costing time
        lines += ["", f"Ceiling at this CPU's best matrix-multiply rate ({gemm['32']:.0f} GFLOP/s fp32, {gemm['bf16']:.0f} bf16; "
                  "GFLOP per cell from torch's FlopCounterMode), cells/s, fp32 / bf16:", "",
                  "| config | GFLOP per cell: VAE step / flow step / flow pass / decode | VAE train | sampling euler 50, w=1 | "
                  "sampling midpoint 10, w=2 |", "|---|---|---|---|---|"]
        for r in results:
            if "ceiling_cells_per_s" not in r:
                continue
            f, c = r["flops_per_cell"], r["ceiling_cells_per_s"]
            lines.append(f"| {r['config']} | " + " / ".join(f"{f[k] / 1e9:.4f}" for k in ("vae_train_step", "flow_train_step",
                                                                                          "flow_pass", "decode"))
                         + " | " + " | ".join(f"{c['32'][k]:.0f} / {c['bf16'][k]:.0f}"
                                              for k in ("vae_train", "sampling_euler50_w1", "sampling_midpoint10_w2")) + " |")
    table = "\n".join(lines)
    write_block(block, f"Measured {meta['date']} on {meta['cpu_count']} CPU cores{on_cpu(meta)} ({meta['threads']} threads), "
                               f"{meta['data']}:\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
