"""GPU check and speed (not a test): every task end to end on a CUDA GPU, from the Python API and
the CLI; whether a seed repeats there; VAE training and sampling throughput; and the generation
protocol's verdict on pbmc_3tech with a model trained on the GPU.

    python benchmarks/bench_gpu.py --out DIR [--sections smoke determinism batch_size training sampling quality] [--seeds 0 1]
                                   [--training paper,32,0,1024 ...] [--deadline SECONDS]
    python benchmarks/bench_gpu.py --table     # rewrite the README table from results/gpu.json

CI has no GPU, so this runs by hand on a machine with one (this project's tasks are lent one only
by chance). Data: ../shared/data (pbmc_3tech for training and the checks; scVelo pancreas, 2,000
genes, for sampling, as benchmarks/bench_speed.py on the CPU). Each section's results go to
DIR/gpu.json as soon as it ends, so a run stopped at its time limit keeps what it measured; a
failing step is recorded with its error and the others go on.

On this project's lent GPU machine (its own python3 with torch; nothing can be installed from a
registry there) the runs of 2026-12-04 carried anndata, scanpy, POT and their missing needs as
wheels in .whl/ and the two data files in .gpudata/, then ran
    pip install --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD/python
    mkdir -p ../shared && ln -sfn $PWD/.gpudata ../shared/data
    PYSAVE_COMMIT=<commit> python3 benchmarks/bench_gpu.py --out $OUT --deadline 420
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

from eval_generation import FAST  # the harness's fast network (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.path.join(HERE, "..", "..", "shared", "data")
PBMC = os.path.join(SHARED_DATA, "pbmc_3tech_symphony_1200.h5ad")
PANCREAS = os.path.join(SHARED_DATA, "scvelo_pancreas_e15_supercell_3696.h5ad")
# VAE training: (network, precision, torch.compile, batch size); "paper" is pysave's default network.
TRAINING = [("paper", "32", False, 256), ("paper", "bf16", False, 256), ("paper", "bf16", True, 256),
            ("paper", "bf16", False, 1024), ("fast", "bf16", False, 256)]
TRAINING_EPOCHS = 20
# Sampling at 2,000 genes: (solver, steps, guidance, output, precision, batch size); the issue's
# setting is Euler, 50 steps; the default is midpoint 10, w = 1.5 (2 until 2026-12-06), sampled
# counts, fp32 (sampling's "auto" on every device since 2026-12-04).
SAMPLING = [("euler", 50, 1.0, "mean", "32", 4096), ("euler", 50, 1.0, "mean", "bf16", 4096),
            ("euler", 50, 1.0, "mean", "bf16", 16384), ("euler", 50, 1.0, "sample", "bf16", 16384),
            ("midpoint", 10, 2.0, "sample", "bf16", 16384), ("euler", 50, 1.0, "sample", "32", 16384),
            ("midpoint", 10, 1.5, "sample", "32", 16384)]
N_SAMPLE = 50_000
DEVICE = "cuda"  # --device cpu (with --quick) only checks this script itself, on a machine without a GPU
QUALITY_TAG = "_fmask0.15_all0.1_midpoint10_w2_gpu"
# The targets table's pbmc_3tech rows (fast network, 16 blocks, 60 epochs; flow masking 0.15 + 0.1).
QUALITY_CMD = ["--task", "generation", "--dataset", "pbmc_3tech", "--method", "pysave",
               "--guidance", "2", "--steps", "10", "--solver", "midpoint",
               "--params", '{"mask_prob": 0.15, "mask_all_prob": 0.1}']


def sync():
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def load_pbmc():
    import anndata as ad

    import pysave

    adata = ad.read_h5ad(PBMC)
    pysave.SAVE.setup_anndata(adata, ["batch", "cell_type"], batch_key="batch")
    return adata


def digest(model) -> str:
    import hashlib

    return hashlib.sha256(b"".join(v.detach().float().cpu().numpy().tobytes()
                                   for v in list(model.vae.state_dict().values()) + list(model.flow.state_dict().values()))).hexdigest()[:16]


class Recorder:
    """Results by section, written to OUT/gpu.json after every step (atomically)."""

    def __init__(self, out: str):
        self.path, self.results = os.path.join(out, "gpu.json"), {}

    def step(self, section: str, name: str, fn):
        t0 = time.perf_counter()
        try:
            value = fn()
            entry = {"ok": True, **(value if isinstance(value, dict) else {"value": value})}
        except Exception as err:  # recorded, and the next step runs
            entry = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.results.setdefault(section, {})[name] = entry
        print(f"[{section}] {name}: {json.dumps({k: v for k, v in entry.items() if k != 'traceback'})[:600]}", flush=True)
        self.write()
        return entry

    def write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.results, fh, indent=1)
        os.replace(tmp, self.path)


def environment(commit: str) -> dict:
    import numpy
    import torch

    gpu = {}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gib": round(props.total_memory / 2**30, 1),
               "multiprocessors": props.multi_processor_count}
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "device": DEVICE, **gpu,
            "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": numpy.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count()}


def smoke(rec: Recorder, work: str) -> None:
    """Each task on the GPU through the Python API, a GPU-trained model loaded on the CPU, and the CLI."""
    import numpy as np
    import torch

    import pysave

    adata = load_pbmc()
    state = {}

    def train():
        model = pysave.SAVE(adata, seed=0, verbose=False)
        model.train(max_epochs=5, flow_epochs=5, seed=0, progress=False, device=DEVICE)
        state["model"] = model
        s = model.training_summary
        assert next(model.vae.parameters()).device.type == DEVICE.split(":")[0] == next(model.flow.parameters()).device.type
        return {"device": s["device"], "precision": s["precision"], "vae_loss_finite": bool(np.isfinite(s["vae"]["best_monitored_loss"]))}

    rec.step("smoke", "train", train)
    if "model" not in state:
        return
    model = state["model"]
    cell_types = list(adata.obs["cell_type"].cat.categories)

    def latent():
        z = model.get_latent_representation(adata)
        assert z.shape == (adata.n_obs, 128) and np.isfinite(z).all() and "X_save" in adata.obsm
        state["z"] = z
        return {"shape": list(z.shape)}

    def generate():
        g = model.generate({"batch": "10x_5prime", "cell_type": cell_types[0]}, n_cells=300, seed=3)
        g2 = model.generate({"batch": "10x_5prime", "cell_type": cell_types[0]}, n_cells=300, seed=3, batch_size=64)
        X, X2 = np.asarray(g.X), np.asarray(g2.X)  # generated X is dense
        assert np.isfinite(X).all() and (X >= 0).all()
        state["generated"] = X
        return {"shape": list(g.shape), "precision": g.uns["pysave"]["precision"], "output": g.uns["pysave"]["output"],
                "same_cells_other_batch_size": bool(np.array_equal(X, X2)), "max_diff_other_batch_size": float(np.abs(X - X2).max())}

    def unseen():
        g = model.generate({"cell_type": cell_types[-1]}, n_cells=100, seed=0)  # batch masked
        return {"shape": list(g.shape)}

    def transfer():
        src = adata[adata.obs["batch"] == "10x_3prime_v2"][:200].copy()
        out = model.transfer(src, {"batch": "10x_5prime"})
        X = np.asarray(out.X)
        assert X.shape == (200, adata.n_vars) and np.isfinite(X).all()
        return {"shape": list(X.shape), "via": out.uns["pysave"].get("via")}

    def correct():
        X = model.correct(adata, batch_key="batch")
        assert np.isfinite(X).all() and "save_corrected" in adata.layers
        return {"shape": list(X.shape)}

    def attention():
        table = model.attention_by(adata, key="cell_type")
        return {"shape": list(table.shape)}

    def save_load_cpu():
        path = os.path.join(work, "api_model")
        model.save(path, overwrite=True)
        cpu = pysave.SAVE.load(path, device="cpu", verbose=False)
        z_cpu = cpu.get_latent_representation(adata, key_added=None)
        gpu = pysave.SAVE.load(path, device=DEVICE, verbose=False)
        X = gpu.generate({"batch": "10x_5prime", "cell_type": cell_types[0]}, n_cells=300, seed=3).X
        X = np.asarray(X)
        return {"latent_max_abs_diff_cpu_vs_gpu": float(np.abs(z_cpu - state["z"]).max()),
                "latent_scale": float(np.abs(state["z"]).max()),
                "reloaded_generates_same_cells": bool(np.array_equal(X, state.get("generated")))}

    for name, fn in [("latent", latent), ("generate", generate), ("generate_masked_batch", unseen), ("transfer", transfer),
                     ("correct", correct), ("attention_by", attention), ("save_load_cpu", save_load_cpu)]:
        rec.step("smoke", name, fn)

    def cli():
        env = {**os.environ, "PYTHONPATH": os.path.join(HERE, "..", "python") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        m, g, e, c = (os.path.join(work, n) for n in ("cli_model", "cli_gen.h5ad", "cli_embed.h5ad", "cli_corr.h5ad"))
        runs = [["train", PBMC, "--condition", "batch", "--condition", "cell_type", "--batch-key", "batch", "--out", m,
                 "--epochs", "3", "--flow-epochs", "3", "--device", DEVICE, "--overwrite", "--quiet"],
                ["generate", m, "--set", f"cell_type={cell_types[0]}", "--n", "200", "--out", g, "--device", DEVICE, "--overwrite", "--quiet"],
                ["embed", m, PBMC, "--out", e, "--device", DEVICE, "--overwrite", "--quiet"],
                ["correct", m, PBMC, "--out", c, "--device", DEVICE, "--overwrite", "--quiet"]]
        done = []
        for args in runs:
            r = subprocess.run([sys.executable, "-m", "pysave", *args], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"pysave {args[0]} exited {r.returncode}: {r.stderr[-1500:]}")
            done.append(args[0])
        import anndata as ad

        return {"commands": done, "generated_shape": list(ad.read_h5ad(g).shape)}

    rec.step("smoke", "cli", cli)
    # Drop the model before the next stage: `del state` alone left it alive in `model` (and
    # pyflakes read the closures above as using a deleted name).
    state.clear()
    model = None  # noqa: F841 (the closures' cell, rebound so the GPU memory can go)
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()


def determinism(rec: Recorder) -> None:
    """The same seed twice on the GPU: the same weights and the same cells?"""
    import numpy as np

    import pysave

    adata = load_pbmc()
    for precision in ("32", "bf16"):
        def twice(precision=precision):
            digests, cells = [], []
            for _ in range(2):
                model = pysave.SAVE(adata, seed=0, verbose=False)
                model.train(max_epochs=5, flow_epochs=5, seed=0, progress=False, device=DEVICE, precision=precision)
                digests.append(digest(model))
                X = model.generate({"batch": "10x_5prime", "cell_type": "B"}, n_cells=200, seed=1, precision=precision).X
                cells.append(np.asarray(X))
            return {"weights_equal": digests[0] == digests[1], "digests": digests,
                    "cells_equal": bool(np.array_equal(cells[0], cells[1])), "cells_max_abs_diff": float(np.abs(cells[0] - cells[1]).max())}

        rec.step("determinism", f"train_twice_{precision}", twice)


def batch_size_check(rec: Recorder) -> None:
    """One model, 300 cells of one seed generated at batch_size 4,096 and 64 (and 4,096 again),
    per precision and output: how far the cells move with the batch size (run 3 of 2026-12-04
    ran this code as a one-off command; results/gpu.json's "batch_size_check")."""
    import numpy as np

    import pysave

    adata = load_pbmc()
    model = pysave.SAVE(adata, seed=0, verbose=False)
    model.train(max_epochs=5, flow_epochs=5, seed=0, progress=False, device=DEVICE)
    for precision in ("32", "bf16"):
        for output in ("mean", "sample"):
            def compare(precision=precision, output=output):
                runs = [model.generate({"batch": "10x_5prime", "cell_type": "B"}, n_cells=300, seed=3, batch_size=b,
                                       output=output, precision=precision) for b in (4096, 64, 4096)]
                X = [np.asarray(r.X) for r in runs]
                Z = [r.obsm["X_save"] for r in runs]
                return {"latent_max_abs_diff": float(np.abs(Z[0] - Z[1]).max()), "repeat_max_abs_diff": float(np.abs(Z[0] - Z[2]).max()),
                        "X_max_abs_diff": float(np.abs(X[0] - X[1]).max()), "X_fraction_differing": float((X[0] != X[1]).mean())}

            rec.step("batch_size_check", f"{precision}_{output}", compare)


def training_speed(rec: Recorder) -> None:
    import pysave

    adata = load_pbmc()
    for network, precision, compiled, batch_size in TRAINING:
        def train(network=network, precision=precision, compiled=compiled, batch_size=batch_size):
            params = FAST if network == "fast" else {}
            out = {}
            for label, epochs in (("warmup", 1), ("measured", TRAINING_EPOCHS)):  # the warm-up pays compilation
                model = pysave.SAVE(adata, seed=0, verbose=False, **params)
                model.train(max_epochs=epochs, flow_epochs=epochs, batch_size=batch_size, validation_fraction=0.0, progress=False,
                            device=DEVICE, precision=precision, torch_compile=compiled, seed=0)
                s = model.training_summary
                out[label] = {"vae_cells_per_s": s["vae"]["cells_per_second"], "flow_cells_per_s": s["flow"]["cells_per_second"],
                              "vae_seconds": s["vae"]["seconds"]}
            return {"vae_train_cells_per_s": out["measured"]["vae_cells_per_s"],
                    "flow_train_cells_per_s": out["measured"]["flow_cells_per_s"],
                    "warmup_epoch_seconds": out["warmup"]["vae_seconds"], "epochs": TRAINING_EPOCHS, "n_cells": adata.n_obs}

        rec.step("training", f"{network}_{precision}{'_compiled' if compiled else ''}_batch{batch_size}", train)


def sampling_speed(rec: Recorder) -> None:
    import anndata as ad
    import torch

    import pysave

    pancreas = ad.read_h5ad(PANCREAS)
    pysave.SAVE.setup_anndata(pancreas, ["clusters"])
    state = {}

    def fit():
        model = pysave.SAVE(pancreas, seed=0, verbose=False)
        model.train(max_epochs=3, flow_epochs=3, validation_fraction=0.0, progress=False, device=DEVICE, seed=0)
        model.generate({"clusters": "Beta"}, n_cells=4096)  # warm-up
        state["model"] = model
        return {"n_genes": pancreas.n_vars}

    rec.step("sampling", "fit_pancreas", fit)
    if "model" not in state:
        return
    model = state["model"]
    for solver, steps, guidance, output, precision, batch_size in SAMPLING:
        def sample(solver=solver, steps=steps, guidance=guidance, output=output, precision=precision, batch_size=batch_size):
            best = 0.0
            for _ in range(2):
                sync()
                t = time.perf_counter()
                model.generate({"clusters": "Beta"}, n_cells=N_SAMPLE, n_steps=steps, solver=solver, guidance=guidance,
                               seed=1, output=output, precision=precision, batch_size=batch_size)
                best = max(best, N_SAMPLE / (time.perf_counter() - t))
            return {"cells_per_s": best, "n_cells": N_SAMPLE}

        rec.step("sampling", f"{solver}{steps}_w{guidance:g}_{output}_{precision}_batch{batch_size}", sample)

    def parts():
        # Where a generate() call's time goes: the flow's ODE alone, then the decoder alone.
        from pysave.flow import sample_latents
        from pysave.train import autocast

        n = 16384
        code = model._code_of("clusters", "Beta")
        codes = torch.full((n, 1), code, dtype=torch.long, device=model.device)
        g = torch.Generator(device=model.device).manual_seed(0)
        out = {}
        with torch.no_grad(), autocast(model.device, "bf16"):
            for label, fn in (("flow_euler50_w1", lambda: sample_latents(model.flow, codes, 1.0, 50, "euler", g)),
                              ("decode", lambda: model.vae.decode_mean(torch.randn(n, 128, device=model.device), codes))):
                fn()
                sync()
                t = time.perf_counter()
                for _ in range(3):
                    fn()
                sync()
                out[f"{label}_cells_per_s"] = 3 * n / (time.perf_counter() - t)
        return out

    rec.step("sampling", "parts_bf16_batch16384", parts)

    def count_draws():
        # The counts drawn on the host's CPU alone (data.sample_counts, timed as bench_count_draws.py
        # times it), by threads: since 2026-12-07 each run of 256 cells has its own streams, drawn on up to 8.
        from bench_count_draws import real_means, seconds_by_threads

        lognorm, log_lib = real_means(4096)
        timed, peak_mb = seconds_by_threads(lognorm, log_lib, None, [1, 2, 4, 8], 3)
        return {"cpu_count": os.cpu_count(), **{f"threads_{k}_cells_per_s": len(lognorm) / min(v) for k, v in timed.items()},
                **{f"threads_{k}_peak_traced_mb": mb for k, mb in peak_mb.items()}}

    rec.step("sampling", "count_draws_cpu", count_draws)


def quality(rec: Recorder, out: str, commit: str, deadline: float, seeds=(0, 1)) -> None:
    """The generation protocol's rows (run_benchmarks.py) for pbmc_3tech, with the model trained
    (bf16, the default on CUDA) and sampled (fp32, as the CPU rows) on the GPU; the seeds run at
    the same time (one GPU, the machine's cores shared out), each stopped at the deadline."""
    threads = max(1, (os.cpu_count() or 2) // len(seeds))
    env = {**os.environ, "PYSAVE_COMMIT": commit}
    procs = {seed: subprocess.Popen([sys.executable, os.path.join(HERE, "run_benchmarks.py"), *QUALITY_CMD, "--seeds", str(seed),
                                     "--threads", str(threads), "--tag", QUALITY_TAG],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for seed in seeds}
    for seed, proc in procs.items():
        def run(seed=seed, proc=proc):
            try:
                _, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                raise RuntimeError("stopped at the deadline") from None
            if proc.returncode != 0:
                raise RuntimeError(err[-2000:])
            name = f"bench_generation_pbmc_3tech_pysave{QUALITY_TAG}_s{seed}.json"
            with open(os.path.join(HERE, "results", name)) as fh:
                row = json.load(fh)
            with open(os.path.join(out, name), "w") as fh:
                json.dump(row, fh)
            m = row["metrics"]
            return {"file": name, "W1_over_floor": m["sample_W1_over_floor"], "MMD": m["sample_MMD"],
                    "gaussian_MMD": m["gaussian_MMD"], "spread_over_floor": m.get("sample_spread_over_floor"),
                    "wall_seconds": row["wall_seconds"], "threads": threads}

        rec.step("quality", f"seed{seed}", run)


def write_table(results: str = os.path.join(HERE, "results", "gpu.json"), readme: str | None = None) -> None:
    """The README block from results/gpu.json: one run's file, or runs merged by hand ("runs" names
    each run's environment; every row says which run it came from)."""
    from readme_table import README, write_block

    with open(results) as fh:
        r = json.load(fh)
    runs = r.get("runs") or {"1": r["environment"]["info"]}
    lines = [f"Run {k}: {env.get('gpu', 'no GPU')} ({env.get('gpu_memory_gib', '-')} GiB), torch {env['torch']} "
             f"(CUDA {env['cuda']}), numpy {env['numpy']}, {env['cpu_count']} CPU cores, {env['date']}, commit "
             f"{env['commit'][:7]}." for k, env in runs.items()]

    def run_of(row):
        return f" (run {row['run']})" if "run" in row and len(runs) > 1 else ""

    lines += ["", "| VAE training, pbmc_3tech (1,200 cells x 1,767 genes), 20 epochs | cells/s | warm-up epoch, s |", "|---|---|---|"]
    for name, row in r.get("training", {}).items():
        lines.append(f"| {name}{run_of(row)} | {row['vae_train_cells_per_s']:,.0f} | {row['warmup_epoch_seconds']:.1f} |"
                     if row["ok"] else f"| {name} | failed: {row['error'][:80]} | - |")
    lines += ["", "| sampling, scVelo pancreas (2,000 genes), 50,000 cells, best of 2 | cells/s |", "|---|---|"]
    for name, row in r.get("sampling", {}).items():
        if name == "fit_pancreas":
            continue
        if name.startswith(("parts", "count_draws")):
            lines.append(f"| {name}{run_of(row)}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()
                                                              if k.endswith("per_s")) + " | |")
        else:
            lines.append(f"| {name}{run_of(row)} | {row['cells_per_s']:,.0f} |" if row["ok"] else f"| {name} | failed |")
    quality_rows = r.get("quality", {})
    if quality_rows:
        lines += ["", "| pbmc_3tech generation (targets-table protocol), model trained on the GPU | W1 / floor | MMD | "
                  "Gaussian MMD | spread / floor's |", "|---|---|---|---|---|"]
        for name, row in quality_rows.items():
            lines.append(f"| {name}{run_of(row)} | {row['W1_over_floor']:.3f} | {row['MMD']:.3f} | {row['gaussian_MMD']:.3f} | "
                         f"{row['spread_over_floor']:.2f} |" if row["ok"] else f"| {name} | {row['error'][:80]} | | | |")
        ok = [row for row in quality_rows.values() if row["ok"]]
        if len(ok) > 1:
            mean = {k: sum(row[k] for row in ok) / len(ok) for k in ("W1_over_floor", "MMD", "gaussian_MMD", "spread_over_floor")}
            lines.append(f"| mean of {len(ok)} | {mean['W1_over_floor']:.3f} | {mean['MMD']:.3f} | {mean['gaussian_MMD']:.3f} | "
                         f"{mean['spread_over_floor']:.2f} |")
    lines += ["", "| check on the GPU | result |", "|---|---|"]
    for section in ("smoke", "smoke_before_fixes", "determinism"):
        for name, row in r.get(section, {}).items():
            shown = {k: v for k, v in row.items() if k not in ("ok", "seconds", "traceback", "digests", "run")}
            lines.append(f"| {section}: {name}{run_of(row)} | {'ok' if row['ok'] else 'FAILED'} {json.dumps(shown)[:160]} |")
    check = r.get("batch_size_check")
    if check:
        lines += ["", f"Batch size check: {check['note']}.", "",
                  "| precision, output | latents, max diff | repeat, max diff | X, max diff | X, share of values differing |",
                  "|---|---|---|---|---|"]
        for name, row in check.items():
            if name != "note":
                lines.append(f"| {name.replace('_', ', ')} | {row['latent_max_abs_diff']:.2g} | {row['repeat_max_abs_diff']:.2g} | "
                             f"{row['X_max_abs_diff']:.3g} | {row['X_fraction_differing']:.3f} |")
    write_block("gpu-table", "\n".join(lines), readme or README)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--sections", nargs="+", default=["smoke", "determinism", "batch_size", "training", "sampling", "quality"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="quality: the seeds (run at the same time)")
    p.add_argument("--training", nargs="+", default=None,
                   help="training rows NETWORK,PRECISION,COMPILE(0/1),BATCH (default: the TRAINING list)")
    p.add_argument("--deadline", type=float, default=480, help="seconds from the start; quality runs only in what is left")
    p.add_argument("--commit", default=os.environ.get("PYSAVE_COMMIT", ""))
    p.add_argument("--table", action="store_true")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        write_table()
        return
    import torch

    global DEVICE, N_SAMPLE, TRAINING_EPOCHS
    DEVICE = args.device
    if args.training:
        TRAINING[:] = [(n, p, bool(int(c)), int(b)) for n, p, c, b in (row.split(",") for row in args.training)]
    if args.quick:
        N_SAMPLE, TRAINING_EPOCHS = 512, 1
        TRAINING[:] = [t for t in TRAINING if not t[2]]
        QUALITY_CMD.extend(["--epochs", "1", "--train-params", '{"flow_epochs": 1}'])
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark checks pysave on a GPU (CI and the CPU rows are elsewhere).")
    deadline = time.time() + args.deadline
    os.makedirs(args.out, exist_ok=True)
    rec = Recorder(args.out)
    rec.step("environment", "info", lambda: environment(args.commit))
    with tempfile.TemporaryDirectory() as work:
        for section in args.sections:
            if section == "smoke":
                smoke(rec, work)
            elif section == "determinism":
                determinism(rec)
            elif section == "batch_size":
                batch_size_check(rec)
            elif section == "training":
                training_speed(rec)
            elif section == "sampling":
                sampling_speed(rec)
            elif section == "quality":
                quality(rec, args.out, args.commit, deadline, args.seeds)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
