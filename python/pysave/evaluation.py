"""Evaluation reports: the protocols of `metrics` run on one task, with their table, summary and
plots written to a folder. One function, `evaluate`, serves the Python API, `pysave evaluate`
and saveR's `EvaluateSAVE()`, so the three give the same numbers and files."""
from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np

from .errors import PySaveError

TASKS = ("generation", "batch", "perturbation")


def evaluate(real, generated=None, task: str = "generation", out: str | None = None, groups=(), floor=None,
             counts_layer: str | None = None, n_hvg: int = 2000, n_pcs: int = 30, batch_key: str | None = None,
             label_key: str | None = None, embeddings=(), layer_embeddings=(), pre_integrated: str | None = None,
             condition_key: str = "condition", control: str = "control", stimulated: str = "stimulated",
             cell_type_key: str | None = "cell_type", n_degs: int = 100, seed: int = 0, umap: bool = True,
             overwrite: bool = False, sources: dict | None = None):
    """Score one task with the shipped protocols (see ``pysave.metrics``).

    - ``task="generation"``: ``generated`` cells against ``real`` held-out cells, per group of the
      ``groups`` obs columns (W1/W2, MMD, per-gene-mean R^2/PCC); ``floor``: other real cells of
      the same groups (e.g. the training cells) for the real-vs-real noise floor (``floor_*``), also
      drawn at each group's generated size (``floor_sized_*``), and the per-group Gaussian fitted
      to them (``gaussian_*``), the trivial baseline.
    - ``task="batch"``: scIB Bio / Batch / Total of the ``embeddings`` (obsm keys) of ``real``,
      and of a 50-PC PCA of each of ``layer_embeddings``; needs ``pip install pysave[eval]``.
    - ``task="perturbation"``: predicted stimulated cells (``generated``) against ``real`` (which
      holds control and stimulated cells), R^2 / PCC of per-gene means, all genes and top DEGs,
      per value of ``cell_type_key``.

    Returns ``(table, summary, files)``: the per-group (or per-embedding) table, a JSON-ready
    summary (protocol, means) and the plot files written. With ``out``, metrics.tsv,
    summary.json and the plots (UMAPs unless ``umap=False``) are written there, all at once: the
    report is built in a hidden folder beside ``out`` and moved in when complete, so a failed
    run leaves nothing behind. Without ``out`` nothing is written and no plot is drawn.
    """
    from . import __version__
    from .io import atomic_folder, write_json_atomic, write_text_atomic

    check_request(task, generated is not None, groups=groups, batch_key=batch_key, label_key=label_key,
                  n_embeddings=len(list(embeddings)) + len(list(layer_embeddings)), out=out, overwrite=overwrite,
                  n_hvg=n_hvg, n_pcs=n_pcs, n_degs=n_degs)
    opts = dict(groups=list(groups), floor=floor, counts_layer=counts_layer, n_hvg=int(n_hvg), n_pcs=int(n_pcs), batch_key=batch_key,
                label_key=label_key, embeddings=list(embeddings), layer_embeddings=list(layer_embeddings),
                pre_integrated=pre_integrated, condition_key=condition_key, control=control, stimulated=stimulated,
                cell_type_key=cell_type_key, n_degs=int(n_degs), seed=int(seed), no_umap=not umap)
    files: list[str] = []
    run = {"generation": _evaluate_generation, "batch": _evaluate_batch, "perturbation": _evaluate_perturbation}[task]
    # With `out`, the report is built in a folder beside it and moved in only when all of it is
    # done: a run that fails leaves no half-written report, and an earlier one keeps its other files.
    with atomic_folder(out, "evaluation report", merge=True) if out is not None else nullcontext() as staging:
        table, summary = run(real, generated, staging, files, opts)
        summary.update({"task": task, "pysave_version": __version__, **(sources or {})})
        if staging is not None:
            write_text_atomic(os.path.join(staging, "metrics.tsv"), table.to_csv(sep="\t"))
            write_json_atomic(os.path.join(staging, "summary.json"), summary)
    return table, summary, files


# How each surface names what the checks talk about: one check, worded in the caller's own terms.
SURFACE_NAMES = {
    "python": {"generated": "generated", "groups": "groups", "batch_key": "batch_key", "label_key": "label_key",
               "embeddings": "embeddings (obsm keys) or layer_embeddings", "out": "out", "overwrite": "overwrite=True",
               "n_hvg": "n_hvg", "n_pcs": "n_pcs", "n_degs": "n_degs", "task": "task"},
    "cli": {"generated": "GENERATED (a second file)", "groups": "--group", "batch_key": "--batch-key", "label_key": "--label-key",
            "embeddings": "--embedding (an obsm key) or --layer-embedding", "out": "--out", "overwrite": "--overwrite",
            "n_hvg": "--n-hvg", "n_pcs": "--n-pcs", "n_degs": "--n-degs", "task": "--task"},
    "r": {"generated": "generated", "groups": "groups", "batch_key": "batch_key", "label_key": "label_key",
          "embeddings": "reductions or layers", "out": "out_dir", "overwrite": "overwrite = TRUE",
          "n_hvg": "n_hvg", "n_pcs": "n_pcs", "n_degs": "n_degs", "task": "task"},
}


def check_request(task: str, has_generated: bool, groups=(), batch_key=None, label_key=None, n_embeddings: int = 0,
                  out: str | None = None, overwrite: bool = False, n_hvg=2000, n_pcs=30, n_degs=100,
                  surface: str = "python") -> None:
    """Check an evaluation request before any data is read or converted, and say what is missing
    in the terms of the surface that asked (``"python"``, ``"cli"`` or ``"r"``). `evaluate` runs
    it; `pysave evaluate` and saveR's `EvaluateSAVE()` run it first, so a wrong call fails fast
    and the three surfaces give the same message."""
    n = SURFACE_NAMES[surface]
    if task not in TASKS:
        raise PySaveError(f"{n['task']} must be one of {', '.join(TASKS)}; got {task!r}.")
    if task == "batch":
        if has_generated:
            raise PySaveError(f"the batch task scores the embeddings of one dataset; give the data only, without {n['generated']}.")
        missing = [n[k] for k, v in (("batch_key", batch_key), ("label_key", label_key)) if not v]
        missing += [n["embeddings"]] if not n_embeddings else []
        if missing:
            raise PySaveError(f"the batch task needs {' and '.join(missing)}: the batch and cell-label columns, and the "
                              "embeddings to score.")
    elif not has_generated:
        raise PySaveError(f"the {task} task needs {n['generated']}: the generated (predicted) cells to score against the real ones.")
    if task == "generation" and not list(groups or []):
        raise PySaveError(f"the generation task needs groups: give {n['groups']}, the obs column(s) that define them "
                          "(e.g. cell_type).")
    for key, value, least in (("n_hvg", n_hvg, 2), ("n_pcs", n_pcs, 1), ("n_degs", n_degs, 1)):
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or not np.isfinite(value)
                or value != int(value) or value < least):
            raise PySaveError(f"{n[key]} must be a whole number of at least {least}; got {value!r}.")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise PySaveError(f"{out!r} is a file, not a folder; give {n['out']} a folder for the report.")
    if out is not None and os.path.exists(out) and not overwrite:
        raise PySaveError(f"output folder {out!r} already exists; choose another {n['out']} or pass {n['overwrite']}.")


def _plot(out, files, name, draw):
    """Draw one plot into out/name (skipped without an output folder)."""
    if out is not None:
        draw(os.path.join(out, name))
        files.append(name)


def _evaluate_generation(real_a, gen_a, out, files, opts):
    from .metrics import generation_fidelity, log_normalized_on, shared_genes
    from .plotting import metric_bars, real_vs_generated_umap

    groups, seed = list(opts["groups"]), opts["seed"]
    result = generation_fidelity(real_a, gen_a, groups, floor=opts["floor"], n_hvg=opts["n_hvg"], n_pcs=opts["n_pcs"],
                                 counts_layer=opts["counts_layer"], seed=seed)
    table = result["per_group"]
    _plot(out, files, "metrics.png", lambda path: metric_bars(table, path))
    if out is not None and not opts["no_umap"]:
        import anndata as ad

        genes = shared_genes([gen_a, real_a])
        r = ad.AnnData(log_normalized_on(real_a, genes), obs=real_a.obs[groups].copy())
        g = ad.AnnData(log_normalized_on(gen_a, genes), obs=gen_a.obs[groups].copy())
        r.var_names = g.var_names = genes
        _plot(out, files, "umap.png", lambda path: real_vs_generated_umap(r, g, groups[0], path, seed=seed))
    info = gen_a.uns.get("pysave", {})
    summary = {"protocol": result["protocol"], "mean": result["mean"], "floor_given": opts["floor"] is not None,
               "scored_output": info.get("output", "unknown"), "scored_output_description": info.get("output_description")}
    return table, summary


def _evaluate_batch(real_a, gen_a, out, files, opts):
    from .metrics import batch_correction, unintegrated_pca
    from .plotting import embedding_umaps, grouped_bars

    keys = list(opts["embeddings"])
    missing = [k for k in keys if k not in real_a.obsm]
    if missing:
        raise PySaveError(f"embedding(s) {missing} are not in the data's obsm (it has: {list(real_a.obsm.keys())}).")
    added = []  # PCAs of layers, put into obsm for scoring and taken out again: the caller's data is left as it was
    try:
        for layer in opts["layer_embeddings"]:
            if layer not in real_a.layers:
                raise PySaveError(f"layer {layer!r} is not in the data (layers: {list(real_a.layers.keys())}).")
            real_a.obsm[f"pca_{layer}"] = unintegrated_pca(real_a, layer=layer, seed=opts["seed"])
            added.append(f"pca_{layer}")
        keys += added
        result = batch_correction(real_a, opts["batch_key"], opts["label_key"], keys, pre_integrated_key=opts["pre_integrated"],
                                  seed=opts["seed"])
        table = result["table"]
        _plot(out, files, "scores.png", lambda path: grouped_bars(table, ["Bio conservation", "Batch correction", "Total"], path,
                                                                  title="scIB scores (raw, not min-max scaled)"))
        if out is not None and not opts["no_umap"]:
            _plot(out, files, "umap.png", lambda path: embedding_umaps(real_a, keys, opts["batch_key"], opts["label_key"], path,
                                                                       seed=opts["seed"]))
    finally:
        for key in added:
            real_a.obsm.pop(key, None)
    mean = {k: float(v) for k, v in table["Total"].items()}
    return table, {"protocol": result["protocol"], "mean": {f"Total[{k}]": v for k, v in mean.items()},
                   "scores": table[["Bio conservation", "Batch correction", "Total"]].to_dict(orient="index")}


def _evaluate_perturbation(real_a, gen_a, out, files, opts):
    import anndata as ad
    import pandas as pd

    from .metrics import log_normalized_on, perturbation_evaluation, shared_genes
    from .plotting import grouped_bars, mean_scatter, real_vs_generated_umap

    ct = opts["cell_type_key"]
    ct = ct if ct and ct in real_a.obs.columns and ct in gen_a.obs.columns else None
    result = perturbation_evaluation(real_a, gen_a, opts["condition_key"], opts["control"], opts["stimulated"],
                                     cell_type_key=ct, n_degs=opts["n_degs"], seed=opts["seed"])
    table = result["per_group"]
    _plot(out, files, "scores.png", lambda path: grouped_bars(
        table, ["degs_r2", "control_degs_r2", "floor_degs_r2", "all_r2", "control_all_r2", "floor_all_r2"], path,
        title="R^2 (squared Pearson) of per-gene means",
        labels=[f"predicted, top {opts['n_degs']} DEGs", "control, DEGs", "noise floor, DEGs", "predicted, all genes",
                "control, all genes", "noise floor, all genes"]))
    summary = {"protocol": result["protocol"], "mean": result["mean"], "degs": result["degs"],
               "scored_output": gen_a.uns.get("pysave", {}).get("output", "unknown")}
    if out is None:  # the rest draws plots
        return table, summary
    genes = shared_genes([gen_a, real_a])
    cond = real_a.obs[opts["condition_key"]].astype(str).to_numpy()
    t_real = real_a.obs[ct].astype(str).to_numpy() if ct else np.full(real_a.n_obs, "all")
    t_pred = gen_a.obs[ct].astype(str).to_numpy() if ct else np.full(gen_a.n_obs, "all")
    x_real, x_pred = log_normalized_on(real_a, genes), log_normalized_on(gen_a, genes)
    pairs = {t: (x_real[(t_real == t) & (cond == opts["stimulated"])].mean(0), x_pred[t_pred == t].mean(0)) for t in table.index}
    _plot(out, files, "means.png", lambda path: mean_scatter(pairs, path, xlabel="real stimulated mean", ylabel="predicted mean"))
    if not opts["no_umap"]:
        stim = np.isin(t_real, list(table.index)) & (cond == opts["stimulated"])
        r = ad.AnnData(x_real[stim], obs=pd.DataFrame({"cell_type": t_real[stim]}))
        g = ad.AnnData(x_pred[np.isin(t_pred, list(table.index))], obs=pd.DataFrame({"cell_type": t_pred[np.isin(t_pred, list(table.index))]}))
        r.var_names = g.var_names = genes
        _plot(out, files, "umap.png", lambda path: real_vs_generated_umap(r, g, "cell_type", path, seed=opts["seed"]))
    return table, summary
