"""Dual-condition generation benchmark (issue 4, task 1), not a test.

    .venv/bin/python benchmarks/eval_generation.py [--dataset pbmc_3tech] [--seeds 0 1] [--epochs 100] [--output sample mean]

For each dataset: an 80/20 split stratified by the condition combination (seeded); pysave trained
on the 80%, then asked for exactly the test cells' condition combinations; scored with
pysave.metrics.generation_fidelity per condition combination (groups with >= 2 cells each side)
against the test cells. Baselines on the same split and space: the noise floor (training cells
of the group vs its test cells) and a per-group Gaussian fitted in the real PCA space to the
training cells. Scored output: pysave's generated X for each ``--output`` kind ("sample": counts
drawn around the decoder mean, log1p(CP10k); "mean": the decoder mean), all from the same trained
model and the same flow latents. ``--model-dir DIR`` keeps the trained models (and reuses them).
Results: benchmarks/results/generation_<dataset>[_<blocks>].json and a table in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")
DATASETS = {
    "pbmc_3tech": ("pbmc_3tech_symphony_1200.h5ad", ["batch", "cell_type"], "batch"),
    "baron_human": ("baron2016_pancreas_human_came_2142.h5ad", ["batch", "cell_type"], "batch"),
    # single-condition generation (issue 4, task 2)
    "scvelo_pancreas": ("scvelo_pancreas_e15_supercell_3696.h5ad", ["clusters"], None),
    "pbmc4k": ("pbmc4k_soupx_2170.h5ad", ["cell_type"], None),
    # The dual-condition sets with two more conditions that repeat what the first two say (a coarser
    # cell type; the chemistry, or the pancreatic compartment): the same split and groups, but four
    # conditions, so that guidance's unconditional field trains on mask_prob ** 4 of the cells.
    "pbmc_3tech_4cond": ("pbmc_3tech_symphony_1200.h5ad", ["batch", "cell_type", "cell_type_broad", "chemistry"], "batch"),
    "baron_human_4cond": ("baron2016_pancreas_human_came_2142.h5ad", ["batch", "cell_type", "cell_type_ontology", "compartment"], "batch"),
}
# Conditions made from others (column: (source column, value -> derived value)); each is nested in its source.
DERIVED = {
    "chemistry": ("batch", {"10x_3prime_v1": "3prime", "10x_3prime_v2": "3prime", "10x_5prime": "5prime"}),
    "compartment": ("cell_type", {**dict.fromkeys(["alpha", "beta", "delta", "gamma", "epsilon"], "endocrine"),
                                  **dict.fromkeys(["acinar", "ductal"], "exocrine")}),
}
FAST = dict(n_blocks=16, hidden_size=128, condition_dim=256, n_encoder_layers=2, n_decoder_layers=2)


def stratified_split(obs, keys, seed, test_fraction=0.2):
    rng = np.random.default_rng(seed)
    groups = obs[keys].astype(str).agg(" | ".join, axis=1).to_numpy()
    test = np.zeros(len(obs), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        n = int(round(test_fraction * len(idx)))
        test[rng.choice(idx, n, replace=False)] = True
    return ~test, test


def split(dataset, seed, max_genes=2000):
    """The 80/20 split (stratified by the condition combination) in the model's gene space: the
    seurat_v3 HVGs of the training cells. Returns train, test, condition keys, batch key."""
    import anndata as ad
    import scanpy as sc

    file, keys, batch_key = DATASETS[dataset]
    adata = ad.read_h5ad(os.path.join(DATA, file))
    for key in keys:
        if key in DERIVED:
            source, values = DERIVED[key]
            adata.obs[key] = adata.obs[source].astype(str).map(lambda v: values.get(v, "other")).astype("category")
    # Derived conditions are nested in their sources: stratifying by the others gives the same split.
    train_mask, test_mask = stratified_split(adata.obs, [k for k in keys if k not in DERIVED], seed)
    if adata.n_vars > max_genes:
        hvg = adata[train_mask].copy()
        sc.pp.highly_variable_genes(hvg, n_top_genes=max_genes, flavor="seurat_v3")
        adata = adata[:, hvg.var["highly_variable"].to_numpy()].copy()
    return adata[train_mask].copy(), adata[test_mask].copy(), keys, batch_key


def groups(adata, keys) -> np.ndarray:
    """Each cell's condition combination, as "value | value"."""
    return adata.obs[keys].astype(str).agg(" | ".join, axis=1).to_numpy()


def gaussian_baseline(train, test, keys, seed, size="test"):
    """Per-group distances to the test cells of a Gaussian fitted, in the test cells' PC space,
    to the training cells of each group; ``size``: as many points as the group's test cells
    ("test", the protocol) or as its training cells ("train", the floor's size). One random stream
    over the groups, one draw each, as every stored row drew it; ``pysave evaluate``'s own
    ``gaussian_*`` columns fit the same Gaussian but draw each group from its own stream, 3 times."""
    from pysave import metrics as M

    space = M.fit_reference_space(test, seed=seed)
    z_train, z_test = space.project(train), space.project(test)
    g_train, g_test = groups(train, keys), groups(test, keys)
    rng = np.random.default_rng(seed)
    z_gauss, g_gauss = [], []
    for g in np.unique(g_test):
        zt = z_train[g_train == g]
        if len(zt) < 2:
            continue
        n = int((g_test == g).sum()) if size == "test" else len(zt)
        z_gauss.append(M.gaussian_like(zt, n, rng))
        g_gauss += [g] * n
    return M.pc_space_distances(z_test, g_test, np.vstack(z_gauss), np.array(g_gauss), seed)


def score(train, test, keys, seed, generated_by_output: dict) -> dict:
    """Each generated set against the test cells, with the noise floor (training cells of the
    group vs its test cells) and a per-group Gaussian fitted in the real PC space to the
    training cells, on the groups all of them score."""
    from pysave import metrics as M

    scored_by_output = {out: M.generation_fidelity(test, gen, keys, floor=train, seed=seed)
                        for out, gen in generated_by_output.items()}
    table = next(iter(scored_by_output.values()))["per_group"]
    gauss = gaussian_baseline(train, test, keys, seed, size="test")
    common = table.index.intersection(gauss.index)
    if "floor_W1" in table.columns:
        common = common.intersection(table.index[table["floor_W1"].notna()])
    summary = {
        "groups": int(len(common)),
        "noise_floor": {m: float(table.loc[common, f"floor_{m}"].mean()) for m in ("W1", "W2", "MMD", "spread")},
        # the floor's cells drawn at the generated (test) size: what reproducing them would score
        "noise_floor_sized": {m: float(table.loc[common, f"floor_sized_{m}"].mean()) for m in ("W1", "W2", "MMD", "spread")},
        "gaussian_pca": {m: float(gauss.loc[common, m].mean()) for m in ("W1", "W2", "MMD", "spread")},
        "protocol": next(iter(scored_by_output.values()))["protocol"], "outputs": {},
    }
    for output, result in scored_by_output.items():
        t = result["per_group"]
        summary["outputs"][output] = {
            "pysave": {m: float(t.loc[common, m].mean()) for m in ("W1", "W2", "MMD", "mean_r2", "spread")},
            "per_group": t.loc[common].reset_index().to_dict(orient="records"),
        }
    return summary


# The product's sampling as the diagnostics (try_*.py) scored their kept models: generate's defaults
# until d6f1967 (2026-12-06), which took its guidance weight from 2 to 1.5. Kept at w = 2 so that the
# diagnostics give their recorded results again; a diagnostic of today's product passes guidance=1.5.
PRODUCT_SAMPLING = dict(output="sample", n_steps=10, solver="midpoint", guidance=2.0)


def kept_model(model_dir, dataset, seed):
    """A diagnostic's model kept with --model-dir (on the CPU) and its split in the model's genes:
    (model, train, test, condition keys)."""
    import pysave

    train, test, keys, _ = split(dataset, seed)
    model = pysave.SAVE.load(model_dir, verbose=False, device="cpu")
    return model, train[:, model.genes].copy(), test[:, model.genes].copy(), keys


def diagnostic_main(doc: str, run, stem: str, guidance: bool = False) -> dict:
    """Command line of a generation diagnostic (try_*.py) over a model kept with --model-dir:
    --model-dir, --dataset, --seed (and --guidance). Calls run(model_dir, dataset, seed[, guidance]),
    writes results/<stem>_<dataset>_s<seed>.json, prints the floor and the Gaussian, returns the result."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--dataset", default="pbmc_3tech")
    p.add_argument("--seed", type=int, default=0)
    if guidance:
        p.add_argument("--guidance", type=float, default=2.0)
    args = p.parse_args()
    r = run(args.model_dir, args.dataset, args.seed, *([args.guidance] if guidance else []))
    with open(os.path.join(HERE, "results", f"{stem}_{args.dataset}_s{args.seed}.json"), "w") as fh:
        json.dump(r, fh, indent=1)
    print(f"{args.dataset} s{args.seed}: floor {r['floor']['W1']:.3f} / {r['floor']['MMD']:.3f}, "
          f"Gaussian {r['gaussian']['W1']:.3f} / {r['gaussian']['MMD']:.3f}")
    return r


def scored_result(model_dir, dataset, seed, train, test, keys, sets: dict, **extra) -> dict:
    """A diagnostic's result: each generated set of ``sets`` scored by ``score`` (its W1 / W2 / MMD /
    per-gene-mean r2 under its own name), with the floor, the Gaussian and ``extra``."""
    summary = score(train, test, keys, seed, sets)
    return {"model_dir": model_dir, "dataset": dataset, "seed": seed, **extra, "floor": summary["noise_floor"],
            "gaussian": summary["gaussian_pca"], **{k: v["pysave"] for k, v in summary["outputs"].items()}}


def sampled_under_patches(model_dir, dataset, seed, variants, sampling: dict) -> dict:
    """A diagnostic's result over a kept model: the product's generation (``sampling``, e.g.
    PRODUCT_SAMPLING) as "default (w<w>)", then once per variant ``(name, patch, overrides)`` with
    ``pysave.model.sample_latents`` replaced by ``patch(original, model)`` and ``overrides`` over
    ``sampling``; every set scored by ``scored_result``."""
    from unittest import mock

    import pysave.model as model_module

    model, train, test, keys = kept_model(model_dir, dataset, seed)
    product = dict(seed=seed, **sampling)
    original = model_module.sample_latents
    sets = {f"default (w{product['guidance']:g})": model.generate_like(test.obs[keys], **product)}
    for name, patch, overrides in variants:
        # _generated_chunks looks sample_latents up in pysave.model at call time
        with mock.patch.object(model_module, "sample_latents", patch(original, model)):
            sets[name] = model.generate_like(test.obs[keys], **{**product, **overrides})
    return scored_result(model_dir, dataset, seed, train, test, keys, sets)


def diagnostic_cli(doc: str, run, stem: str) -> dict:
    """``diagnostic_main``, then the W1 / MMD of every set the diagnostic scored."""
    r = diagnostic_main(doc, run, stem)
    print_scored_sets(r)
    return r


def print_scored_sets(result: dict) -> None:
    """Print W1 / MMD of each generated set a diagnostic scored (the floor and Gaussian are printed by diagnostic_main)."""
    for name, value in result.items():
        if isinstance(value, dict) and "W1" in value and name not in ("floor", "gaussian"):
            print(f"  {name}: {value['W1']:.3f} / {value['MMD']:.3f}")


def train_options(epochs, train_params=None) -> dict:
    """``model.train`` options of the harness: ``epochs`` VAE epochs at lr 1e-3 (fast, the harness's
    default), or with ``"product"`` the product's own training (epochs by the scvi-tools rule,
    train()'s lr, early stopping); ``"product-lr<lr>"`` is the same with another VAE learning rate.
    ``train_params`` (e.g. ``{"weight_decay": 0.01}``, from ``--train-params``) go over these."""
    if str(epochs).startswith("product"):
        lr = str(epochs)[len("product"):]
        options = {"lr": float(lr[len("-lr"):])} if lr else {}
    else:
        options = {"max_epochs": int(epochs), "lr": 1e-3}
    return {**options, **(train_params or {})}


def epochs_arg(value: str):
    """--epochs: a number of VAE epochs, "product" or "product-lr<lr>" (see train_options)."""
    if value.startswith("product"):
        train_options(value)  # fails here on a malformed value
        return value
    return int(value)


def model_name(dataset, seed, epochs, params, held_out=None, train_params=None) -> str:
    """The folder name of a model kept with --model-dir: one per (dataset, held-out cell type,
    seed, epochs, parameters, training options), so a sweep of sampling options reuses it."""
    tag = "_".join(f"{k}{v}" for k, v in sorted({**params, **(train_params or {})}.items()) if k != "gene_embeddings")
    held = "" if held_out is None else "_heldout_" + re.sub(r"[^A-Za-z0-9.+-]", "-", held_out)
    return f"{dataset}{held}_s{seed}_e{epochs}_{params.get('gene_embeddings', 'data')}_{tag}"


def trained_model(dataset, seed, epochs, params, train, keys, batch_key, model_dir=None, train_params=None, held_out=None):
    """The pysave model of a split's training cells: loaded from ``model_dir`` when kept there, else
    trained (and kept there; ``held_out`` names the cell type left out, for the folder name).
    Returns (model, training seconds)."""
    import pysave

    t0 = time.perf_counter()
    saved = None if model_dir is None else os.path.join(model_dir, model_name(dataset, seed, epochs, params, held_out, train_params))
    if saved is not None and os.path.exists(saved):
        model = pysave.SAVE.load(saved, verbose=False, device="cpu")
        # The folder is named by the parameters given, not the defaults they fill in: one kept
        # before a default changed would pass for a model trained today. Name what differs instead.
        from pysave.model import DEFAULTS, fingerprint_differences

        stale = fingerprint_differences({k: model.params[k] for k in DEFAULTS}, {**DEFAULTS, **params, "seed": seed},
                                        saved_as="kept")
        if stale:
            raise SystemExit(f"{saved} was trained with other parameters than this run would use ({'; '.join(stale)}), "
                             "e.g. before a default changed: delete it or use another --model-dir.")
        stats = model.condition_latents
        if stats is not None and "cell_latents" not in stats:
            # Kept before the expression PCs (or the kept cells of the local shifts) existed: add
            # them as train() does now (same cells, same seed, so the same numbers), so that
            # via="shift" works as the product does.
            from pysave.shift import expression_pcs, kept_shift_cells

            prep = model._prepare(train)
            pcs, positions = expression_pcs(prep, model.scalers, seed)
            stats.update({**pcs, **kept_shift_cells(model._encode(prep)[0], positions, prep.codes, seed)})
        if not model._spread_pilots:
            # Kept before train() drew the spread calibration's pilots (2026-12-06, eighth session):
            # draw them as train() does now (the same pilots a call would draw, so the same cells),
            # so that the sampling rate is the product's, not a first call's.
            model._train_spread_pilots()
        return model, model.training_summary.get("wall_seconds", float("nan"))
    pysave.SAVE.setup_anndata(train, keys, batch_key=batch_key)
    model = pysave.SAVE(train, seed=seed, verbose=False, **params)
    model.train(seed=seed, progress=False, **train_options(epochs, train_params))
    train_seconds = time.perf_counter() - t0
    model.training_summary["wall_seconds"] = train_seconds
    if saved is not None:
        model.save(saved)
    return model, train_seconds


def run(dataset, seed, epochs, params, outputs=("sample",), model_dir=None, max_genes=2000, guidance=1.0, n_steps=50,
        solver="euler", precision="32", train_params=None):
    train, test, keys, batch_key = split(dataset, seed, max_genes)
    model, train_seconds = trained_model(dataset, seed, epochs, params, train, keys, batch_key, model_dir, train_params)
    generated, speed = {}, {}
    for output in outputs:
        t0 = time.perf_counter()
        generated[output] = model.generate_like(test.obs[keys], seed=seed, output=output, guidance=guidance, n_steps=n_steps,
                                                solver=solver, precision=precision)
        speed[output] = generated[output].n_obs / (time.perf_counter() - t0)
    summary = score(train[:, model.genes].copy(), test[:, model.genes].copy(), keys, seed, generated)
    for output in outputs:
        summary["outputs"][output]["sampling_cells_per_s"] = speed[output]
    summary.update({"dataset": dataset, "seed": seed, "epochs": epochs, "params": params, "train_seconds": train_seconds,
                    "guidance": guidance, "n_steps": n_steps, "solver": solver,
                    "train_cells_per_s": model.training_summary.get("vae", {}).get("cells_per_second")})
    return summary


def run_scvi(dataset, seed, epochs, call_peer, max_genes=2000):
    """scVI as the generation peer on the same split, genes and scoring. ``call_peer(*cli)`` runs
    benchmarks/peers.py in the peers' environment and returns its JSON line (run_benchmarks.peer)."""
    import tempfile

    import anndata as ad

    train, test, keys, _ = split(dataset, seed, max_genes)
    with tempfile.TemporaryDirectory() as tmp:
        train.write_h5ad(os.path.join(tmp, "train.h5ad"))
        request = ad.AnnData(obs=test.obs[keys].astype(str))
        request.write_h5ad(os.path.join(tmp, "request.h5ad"))
        info = call_peer("generate", "--data", os.path.join(tmp, "train.h5ad"), "--predict", os.path.join(tmp, "request.h5ad"),
                         "--out", os.path.join(tmp, "gen.h5ad"), "--keys", *keys, "--seed", seed, "--epochs", epochs)
        generated = ad.read_h5ad(os.path.join(tmp, "gen.h5ad"))
    generated.var_names = train.var_names
    summary = score(train, test, keys, seed, {"sample": generated})
    summary.update({"dataset": dataset, "seed": seed, "epochs": epochs, "train_seconds": info["train_seconds"],
                    "version": info["version"], "train_cells_per_s": train.n_obs * epochs / info["train_seconds"]})
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["pbmc_3tech"], choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=epochs_arg, default=100, help='VAE epochs, or "product" (the product\'s training)')
    parser.add_argument("--paper-size", action="store_true", help="the paper's network instead of the fast one")
    parser.add_argument("--gene-embeddings", default="data", help="data, builtin, random or a file (gene blocks)")
    parser.add_argument("--output", nargs="+", default=["sample", "mean"], choices=["sample", "mean"],
                        help="generated output kinds to score (same model, same latents)")
    parser.add_argument("--model-dir", default=None, help="keep trained models here and reuse them")
    parser.add_argument("--tag", default="", help="suffix of the result file")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight w")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps of the flow ODE")
    args = parser.parse_args()
    params = dict({} if args.paper_size else FAST, gene_embeddings=args.gene_embeddings)
    tag = ("" if args.gene_embeddings == "data" else f"_{os.path.basename(args.gene_embeddings)}") + args.tag
    for dataset in args.dataset:
        runs = [run(dataset, s, args.epochs, params, tuple(args.output), args.model_dir, guidance=args.guidance, n_steps=args.steps)
                for s in args.seeds]
        for r in runs:
            print(json.dumps({"dataset": r["dataset"], "seed": r["seed"], "noise_floor": r["noise_floor"],
                              "gaussian_pca": r["gaussian_pca"], "train_seconds": r["train_seconds"],
                              **{o: v["pysave"] for o, v in r["outputs"].items()}}), flush=True)
        out = os.path.join(HERE, "results", f"generation_{dataset}{tag}.json")
        with open(out, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "runs": runs}, fh, indent=1)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
