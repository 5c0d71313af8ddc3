"""Scale benchmark (not a test): in-memory vs backed training, 1 vs 2 torchrun processes,
bf16 vs fp32, the expression-PC pass of training, streaming generation, on SYNTHETIC atlases
made by make_synthetic_atlas.py, the local latent shifts of transfer(via="shift") at an
atlas's number of strata (synthetic kept cells, no data file), and `pysave transfer` of 100k cells.

    .venv/bin/python benchmarks/make_synthetic_atlas.py --n-cells 100000 --out DIR/syn_100k.h5ad  # and 10k, 1M
    .venv/bin/python benchmarks/bench_scale.py --data-dir DIR [--parts training ddp precision expression_pcs generation local_shifts transfer]

Every measurement runs in a child process, so peak RSS (ru_maxrss) is that run's own.
Training throughput: the real training loop (pysave.train.fit fed by pysave.loader, exactly
what SAVE.train runs) for a fixed number of optimizer steps of batch 256 after the
preprocessing pass, since a full epoch of 1M cells takes hours on 2 cores. Results go to
benchmarks/results/scale.json and the table in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

from readme_table import write_block  # beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "scale.json")
FAST = dict(n_blocks=16, hidden_size=128, condition_dim=256, n_encoder_layers=2, n_decoder_layers=2)
THREADS = 2
SIZES = {"10k": "syn_10k.h5ad", "100k": "syn_100k.h5ad", "1M": "syn_1M.h5ad"}
PARTS = ("training", "precision", "ddp", "expression_pcs", "generation", "local_shifts", "transfer")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_train(path: str, backed: bool, steps: int, precision: str, config: str) -> dict:
    import anndata as ad
    import numpy as np
    import torch

    from pysave import SAVE, loader
    from pysave.train import fit

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    SAVE.setup_anndata(adata, ["clusters", "batch"], batch_key="batch")
    model = SAVE(adata, verbose=False, **(FAST if config == "fast" else {}))
    setup_s = time.perf_counter() - start
    rss_setup = _rss_mb()
    data, cpu = model._data, torch.device("cpu")
    member = np.ones(data.n_cells, dtype=bool)
    chunk = loader.DEFAULT_CHUNK_SIZE if backed else None

    def loss(batch, generator):
        x, codes, counts = batch
        codes = model.vae.condition_embedding.random_mask(codes, 0.2, generator)
        return model.vae.loss(x, codes, counts, kl_weight=0.05, generator=generator)

    batches = lambda epoch: itertools.islice(loader.shuffled_batches(data, member, 256, 0, epoch, cpu, chunk), steps)  # noqa: E731
    result = fit(model.vae, loss, batches, None, 1, steps, 1e-4, 2.5e-5, 1, None, cpu, 0, "VAE", print,
                 progress=False, precision=precision)
    return {"n_cells": data.n_cells, "backed": backed, "precision": precision, "config": config, "steps": steps,
            "setup_seconds": setup_s, "rss_after_setup_mb": rss_setup,
            "train_cells_per_second": result["summary"]["cells_per_second"],
            "train_seconds": result["summary"]["seconds"], "peak_rss_mb": _rss_mb(),
            "final_train_loss": result["history"]["train_loss"][-1]}


def child_expression_pcs(path: str, backed: bool) -> dict:
    """What train() adds after the flow's encoding pass: the expression PCs that weigh the strata
    of transfer(via="shift"), fitted on a seeded sample of cells and then every cell placed in them."""
    import anndata as ad
    import torch

    from pysave import SAVE
    from pysave.shift import expression_pcs

    torch.set_num_threads(THREADS)
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    SAVE.setup_anndata(adata, ["clusters", "batch"], batch_key="batch")
    model = SAVE(adata, verbose=False, **FAST)
    rss_setup = _rss_mb()
    start = time.perf_counter()
    stats, _ = expression_pcs(model._data, model.scalers, 0)
    seconds = time.perf_counter() - start
    return {"n_cells": model._data.n_cells, "backed": backed, "expression_pcs_seconds": seconds,
            "cells_per_second": model._data.n_cells / seconds, "n_pcs": int(stats["pc_components"].shape[0]),
            "rss_after_setup_mb": rss_setup, "peak_rss_mb": _rss_mb()}


def part_expression_pcs(data_dir: str, sizes: list[str]) -> list[dict]:
    rows = []
    for size in sizes:
        r = run_child(["pcs", os.path.join(data_dir, SIZES[size]), "1", "0", "32", "fast"])
        r.update(size=size, mode="backed")
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def child_local_shifts(n_types: int, n_donors: int, n_cells: int, reference_cells: int) -> dict:
    """transfer(via="shift")'s local shifts (``latent_shifts`` with ``SHIFT_NEIGHBOURS``) for an
    atlas of n_types x n_donors x (control, stimulated) combinations, each with its share of the
    SHIFT_KEPT_TOTAL kept cells, and ``n_cells`` control cells moved to stimulated. The kept cells
    are synthetic (types apart in 30 PCs with a decaying spectrum, donors close, a per-type latent
    response): only the cost is measured. Also times the neighbour search as it was before
    2026-12-01's fifth session (scipy cdist + argpartition) on ``reference_cells`` cells."""
    import numpy as np
    import torch
    from scipy.spatial.distance import cdist

    from pysave import shift as M

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    combos = np.array([(s, t, d) for s in range(2) for t in range(n_types) for d in range(n_donors)], dtype=np.int64)
    per = min(M.SHIFT_KEPT_CELLS, M.SHIFT_KEPT_TOTAL // len(combos))
    spread = np.sqrt(np.linspace(40, 0.5, 30))
    type_place, type_latent = rng.normal(size=(n_types, 30)) * spread, rng.normal(size=(n_types, 128)) * 2
    response = rng.normal(size=(n_types, 128))
    groups = np.repeat(np.arange(len(combos)), per)
    s, t, d = combos[groups].T
    positions = type_place[t] + 0.1 * rng.normal(size=(n_donors, 30))[d] + 0.3 * spread * rng.normal(size=(len(groups), 30))
    latents = type_latent[t] + s[:, None] * response[t] + rng.normal(size=(len(groups), 128))
    stats = {"codes": combos, "counts": np.full(len(combos), per), "pc_means": np.zeros((len(combos), 30)),
             "means": np.zeros((len(combos), 128)), "cell_latents": latents.astype(np.float32),
             "cell_positions": positions.astype(np.float32), "cell_groups": groups}
    cells = rng.integers(0, n_types, n_cells)
    query = (type_place[cells] + 0.3 * spread * rng.normal(size=(n_cells, 30))).astype(np.float32)
    source = np.stack([np.zeros(n_cells, np.int64), cells, rng.integers(0, n_donors, n_cells)], 1)
    target = source.copy()
    target[:, 0] = 1
    transport = {}
    start = time.perf_counter()
    M.latent_shifts(stats, None, source[:1], target[:1], [0], positions=query[:1], neighbours=M.SHIFT_NEIGHBOURS,
                    transport=transport)
    solve_s = time.perf_counter() - start
    start = time.perf_counter()
    M.latent_shifts(stats, None, source, target, [0], positions=query, neighbours=M.SHIFT_NEIGHBOURS, transport=transport)
    shift_s = time.perf_counter() - start
    moves, places = next(iter(transport.values()))
    start = time.perf_counter()
    batch = max(1, min(4096, 20_000_000 // len(places)))
    for lo in range(0, reference_cells, batch):
        dist = cdist(query[lo:min(lo + batch, reference_cells)].astype(np.float64), places, "sqeuclidean")
        moves[np.argpartition(dist, M.SHIFT_NEIGHBOURS - 1, axis=1)[:, :M.SHIFT_NEIGHBOURS]].mean(1)
    before_s = time.perf_counter() - start
    return {"combinations": len(combos), "strata": n_types * n_donors, "kept_per_combination": per,
            "kept_source_cells": len(places), "n_cells": n_cells, "transport_seconds": solve_s,
            "shift_seconds": shift_s, "cells_per_second": n_cells / shift_s, "reference_cells": reference_cells,
            "before_cells_per_second": reference_cells / before_s, "peak_rss_mb": _rss_mb()}


def part_local_shifts(n_cells: int) -> list[dict]:
    rows = []
    for n_types, n_donors in ((10, 2), (50, 10)):
        r = run_child(["shifts", str(n_types), str(n_donors), str(n_cells), str(min(n_cells, 10_000))])
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child"] + args, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Runs a command and prints its own peak RSS: RUSAGE_CHILDREN of this process is the maximum over
# every child it ever waited for, so it would carry an earlier, larger run's peak into a later row.
_PEAK_OF_ONE = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
                "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def run_cli(cmd: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS MB of the command's largest process, result) of a command."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK_OF_ONE] + cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    peak = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("peak_rss_kb ")]
    return wall, int(peak[-1]) / 1024 if peak else float("nan"), proc


def part_training(data_dir: str, steps: int, sizes: list[str], in_memory_sizes: list[str]) -> list[dict]:
    rows = []
    for size in sizes:
        path = os.path.join(data_dir, SIZES[size])
        for backed in ((False, True) if size in in_memory_sizes else (True,)):
            r = run_child(["train", path, str(int(backed)), str(steps), "32", "fast"])
            r.update(size=size, mode="backed" if backed else "in-memory")
            print(json.dumps(r), flush=True)
            rows.append(r)
    return rows


def part_precision(data_dir: str, steps: int) -> list[dict]:
    rows = []
    path = os.path.join(data_dir, SIZES["10k"])
    for config in ("paper", "fast"):
        for precision in ("32", "bf16"):
            r = run_child(["train", path, "0", str(steps), precision, config])
            r.update(size="10k", mode="in-memory")
            print(json.dumps(r), flush=True)
            rows.append(r)
    return rows


def part_ddp(data_dir: str, epochs: int) -> list[dict]:
    path = os.path.join(data_dir, SIZES["10k"])
    net = ["--n-blocks", "16", "--hidden-size", "128", "--condition-dim", "256", "--encoder-layers", "2", "--decoder-layers", "2"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_proc in (1, 2):
            out = os.path.join(tmp, f"model_{n_proc}")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_proc}",
                   "-m", "pysave", "train", path, "--condition", "clusters", "--condition", "batch", "--batch-key", "batch",
                   "--epochs", str(epochs), "--flow-epochs", str(epochs), "--checkpoint-every", "0", "--out", out] + net
            wall, rss, proc = run_cli(cmd, env={"OMP_NUM_THREADS": str(THREADS // n_proc)})
            if proc.returncode != 0:
                rows.append({"processes": n_proc, "error": proc.stderr[-2000:]})
                continue
            config = json.load(open(os.path.join(out, "config.json")))
            t = config["training"]
            rows.append({"processes": n_proc, "threads_per_process": THREADS // n_proc, "wall_seconds": wall,
                         "vae_cells_per_second": t["vae"]["cells_per_second"], "flow_cells_per_second": t["flow"]["cells_per_second"],
                         "vae_validation_loss": config["history"]["vae_validation_loss"],
                         "flow_validation_loss": config["history"]["flow_validation_loss"], "peak_rss_mb_largest_process": rss})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def part_generation(data_dir: str, n_cells: int, steps: int) -> list[dict]:
    path = os.path.join(data_dir, SIZES["10k"])
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        model = os.path.join(tmp, "model")
        train = [sys.executable, "-m", "pysave", "train", path, "--condition", "clusters", "--epochs", "1", "--flow-epochs", "1",
                 "--n-blocks", "16", "--hidden-size", "128", "--condition-dim", "256", "--encoder-layers", "2",
                 "--decoder-layers", "2", "--checkpoint-every", "0", "--quiet", "--out", model]
        subprocess.run(train, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
        out = os.path.join(tmp, "generated.h5ad")
        cmd = [sys.executable, "-m", "pysave", "generate", model, "--n", str(n_cells), "--set", "clusters=Ductal",
               "--steps", str(steps), "--chunk-size", "4096", "--quiet", "--out", out]
        wall, rss, proc = run_cli(cmd, env={"OMP_NUM_THREADS": str(THREADS)})
        size = os.path.getsize(out) / 1e9 if os.path.exists(out) else float("nan")
    row = {"n_cells": n_cells, "euler_steps": steps, "wall_seconds": wall, "cells_per_second": n_cells / wall,
           "peak_rss_mb": rss, "file_gb": size, "returncode": proc.returncode}
    print(json.dumps(row), flush=True)
    return [row]


def part_transfer(data_dir: str, size: str) -> list[dict]:
    """`pysave transfer` of every cell of a synthetic atlas to batch b0, by the latent shift and by
    the decoder, from a model trained 1 epoch (VAE and flow); the stages' times come from
    transfer's progress lines."""
    import re

    path = os.path.join(data_dir, SIZES[size])
    rows = []
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        model = os.path.join(tmp, "model")
        train = [sys.executable, "-m", "pysave", "train", path, "--condition", "clusters", "--condition", "batch",
                 "--batch-key", "batch", "--epochs", "1", "--flow-epochs", "1", "--n-blocks", "16", "--hidden-size", "128",
                 "--condition-dim", "256", "--encoder-layers", "2", "--decoder-layers", "2", "--checkpoint-every", "0",
                 "--quiet", "--out", model]
        subprocess.run(train, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
        for via in ("shift", "decoder"):
            out = os.path.join(tmp, f"moved_{via}.h5ad")
            cmd = [sys.executable, "-m", "pysave", "transfer", model, path, "--set", "batch=b0", "--via", via,
                   "--output-kind", "input_plus_change" if via == "shift" else "mean", "--out", out]
            wall, rss, proc = run_cli(cmd, env={"OMP_NUM_THREADS": str(THREADS)})
            stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"transfer: (.+?) \((\d+) s\)", proc.stderr)}
            n_cells = int(next((k.split()[1] for k in stages if k.startswith("encoded")), 0))
            row = {"size": size, "via": via, "n_cells": n_cells, "wall_seconds": wall, "cells_per_second": n_cells / wall,
                   "stage_seconds": stages, "peak_rss_mb": rss, "returncode": proc.returncode}
            if proc.returncode != 0:
                row["error"] = proc.stderr[-2000:]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def render_table(results: dict) -> str:
    """Markdown tables of the results (written between the scale-table markers of README.md)."""
    # Parts can be rerun alone (--parts), so each keeps the date it was measured on.
    dates = {part: results.get("dates", {}).get(part, results.get("date", "?")) for part in PARTS if results.get(part)}
    when = ", ".join(f"{part} {day}" for part, day in dates.items())
    out = [f"Measured on {results['machine']['cpus']} CPU cores ({THREADS} threads; {when}); "
           "data: SYNTHETIC resampled pancreas cells, 2,000 genes (throughput and memory only).", ""]
    train = [r for r in results.get("training", []) if "error" not in r]
    if train:
        out += ["Training (fast network, batch 256, the real loop for up to %d steps after the statistics pass):" % train[0]["steps"], "",
                "| cells | mode | statistics pass s | RSS after it MB | VAE train cells/s | backed / in-memory | peak RSS MB |",
                "|---|---|---|---|---|---|---|"]
        speed = {(r["size"], r["mode"]): r["train_cells_per_second"] for r in train}
        for r in train:
            ratio = speed.get((r["size"], "backed"), float("nan")) / speed.get((r["size"], "in-memory"), float("nan"))
            out.append(f"| {r['size']} | {r['mode']} | {r['setup_seconds']:.0f} | {r['rss_after_setup_mb']:.0f} | "
                       f"{r['train_cells_per_second']:.0f} | {ratio:.2f}x | {r['peak_rss_mb']:.0f} |")
        out.append("")
    prec = [r for r in results.get("precision", []) if "error" not in r]
    if prec:
        out += ["bf16 autocast vs fp32 on the CPU (10k cells, in memory):", "",
                "| network | precision | VAE train cells/s |", "|---|---|---|"]
        out += [f"| {r['config']} | {r['precision']} | {r['train_cells_per_second']:.0f} |" for r in prec]
        out.append("")
    ddp = [r for r in results.get("ddp", []) if "error" not in r]
    if ddp:
        out += ["torchrun on the CPU (gloo), 10k cells, same global batch 256 and seed:", "",
                "| processes x threads | wall s | VAE cells/s | flow cells/s | VAE validation loss by epoch | flow validation loss by epoch |",
                "|---|---|---|---|---|---|"]
        for r in ddp:
            v = ", ".join(f"{x:.1f}" for x in r["vae_validation_loss"])
            f = ", ".join(f"{x:.3f}" for x in r["flow_validation_loss"])
            out.append(f"| {r['processes']} x {r['threads_per_process']} | {r['wall_seconds']:.0f} | {r['vae_cells_per_second']:.0f} | "
                       f"{r['flow_cells_per_second']:.0f} | {v} | {f} |")
        out.append("")
    pcs = [r for r in results.get("expression_pcs", []) if "error" not in r]
    if pcs:
        out += ["The expression PCs train() keeps for `transfer(via=\"shift\")` (fit on a seeded sample, then every cell "
                "placed in them; backed, one extra read of the file):", "",
                "| cells | seconds | cells/s | RSS before MB | peak RSS MB |", "|---|---|---|---|---|"]
        out += [f"| {r['size']} | {r['expression_pcs_seconds']:.0f} | {r['cells_per_second']:.0f} | "
                f"{r['rss_after_setup_mb']:.0f} | {r['peak_rss_mb']:.0f} |" for r in pcs]
        out.append("")
    shifts = [r for r in results.get("local_shifts", []) if "error" not in r]
    if shifts:
        out += ["Local latent shifts of `transfer(via=\"shift\")` (synthetic kept cells; control to stimulated; "
                f"{shifts[0]['n_cells']:,} cells moved; 'before' is the neighbour search until 2026-12-01, scipy cdist + "
                "argpartition, timed on the first 10,000 cells):", "",
                "| combinations | strata | kept cells per combination | kept source cells | optimal transport s | "
                "shift cells/s | before: cells/s | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['combinations']:,} | {r['strata']:,} | {r['kept_per_combination']} | {r['kept_source_cells']:,} | "
                f"{r['transport_seconds']:.1f} | {r['cells_per_second']:,.0f} | {r['before_cells_per_second']:,.0f} | "
                f"{r['peak_rss_mb']:.0f} |" for r in shifts]
        out.append("")
    moved = [r for r in results.get("transfer", []) if "error" not in r]
    if moved:
        out += ["`pysave transfer` of every cell to batch b0 (in memory; model trained 1 epoch; "
                "stage times are cumulative, from transfer's progress lines):", "",
                "| cells | via | output | wall s | cells/s | stages (s since the input was read) | peak RSS MB |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['n_cells']:,} | {r['via']} | {'input_plus_change' if r['via'] == 'shift' else 'mean'} | "
                f"{r['wall_seconds']:.0f} | {r['cells_per_second']:,.0f} | "
                + "; ".join(f"{k} {v:.0f}" for k, v in r["stage_seconds"].items()) + f" | {r['peak_rss_mb']:.0f} |" for r in moved]
        out.append("")
    for r in results.get("generation", []):
        out += [f"Streaming generation: {r['n_cells']:,} cells with {r['euler_steps']} Euler step(s): {r['wall_seconds']:.0f} s "
                f"({r['cells_per_second']:.0f} cells/s), peak RSS {r['peak_rss_mb']:.0f} MB, file {r['file_gb']:.1f} GB.", ""]
    return "\n".join(out)


def write_readme(results: dict) -> None:
    write_block("scale-table", render_table(results))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.argv[2] == "shifts":  # the four numbers of child_local_shifts
            print(json.dumps(child_local_shifts(*(int(x) for x in sys.argv[3:7]))))
            return
        _, _, kind, path, backed, steps, precision, config = sys.argv
        if kind == "pcs":
            print(json.dumps(child_expression_pcs(path, backed == "1")))
        else:
            print(json.dumps(child_train(path, backed == "1", int(steps), precision, config)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--parts", nargs="+", default=list(PARTS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--in-memory-sizes", nargs="+", default=["10k", "100k"],
                        help="Sizes also trained in memory (1M x 2,000 in memory went past 24 GB and was OOM-killed here).")
    parser.add_argument("--ddp-epochs", type=int, default=5)
    parser.add_argument("--generate-cells", type=int, default=1_000_000)
    parser.add_argument("--generate-steps", type=int, default=1)
    parser.add_argument("--shift-cells", type=int, default=100_000, help="local_shifts: cells moved")
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the README table from results/scale.json.")
    args = parser.parse_args()
    if args.table_only:
        write_readme(json.load(open(RESULTS)))
        return
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    results["machine"] = {"cpus": os.cpu_count(), "threads": THREADS, "python": platform.python_version()}
    results["data"] = "SYNTHETIC: scVelo pancreas cells resampled with replacement (make_synthetic_atlas.py); throughput and memory only"
    if "training" in args.parts:
        results["training"] = part_training(args.data_dir, args.steps, args.sizes, args.in_memory_sizes)
    if "precision" in args.parts:
        results["precision"] = part_precision(args.data_dir, 100)
    if "ddp" in args.parts:
        results["ddp"] = part_ddp(args.data_dir, args.ddp_epochs)
    if "expression_pcs" in args.parts:
        results["expression_pcs"] = part_expression_pcs(args.data_dir, args.sizes)
    if "generation" in args.parts:
        results["generation"] = part_generation(args.data_dir, args.generate_cells, args.generate_steps)
    if "local_shifts" in args.parts:
        results["local_shifts"] = part_local_shifts(args.shift_cells)
    if "transfer" in args.parts:
        results["transfer"] = part_transfer(args.data_dir, "100k")
    results.setdefault("dates", {}).update({part: time.strftime("%Y-%m-%d") for part in args.parts})
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(RESULTS + ".tmp", RESULTS)
    write_readme(results)


if __name__ == "__main__":
    main()
