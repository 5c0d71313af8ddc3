"""Plots people look at before they read numbers: UMAP of real vs generated cells and the
block-attention heatmap. matplotlib with the non-interactive Agg backend; files are written
atomically."""
from __future__ import annotations

import numpy as np

from .metrics import torch_threads_kept

ORIGIN_COLOURS = {"real": "#9e9e9e", "generated": "#d62728"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    from .io import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def attention_heatmap(table, path: str) -> None:
    """Categories x gene blocks, each row scaled to its mean so that preferences stand out."""
    plt = _figure()
    values = table.to_numpy()
    rel = values / values.mean(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * values.shape[1] + 2), max(2.5, 0.35 * values.shape[0] + 1)))
    im = ax.imshow(rel, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(table.index)), [str(i) for i in table.index])
    ax.set_xticks(range(values.shape[1]), [c.replace("block_", "") for c in table.columns], fontsize=7)
    ax.set_xlabel("gene block")
    ax.set_ylabel(table.index.name or "")
    fig.colorbar(im, ax=ax, label="attention / row mean")
    ax.set_title("Encoder attention received per gene block")
    _save(fig, path)
    plt.close(fig)


def real_vs_generated_umap(real, generated, color: str, path: str, seed: int = 0) -> None:
    """UMAP of real and generated cells together (both log-normalized, same genes), two panels:
    by origin and by ``color``."""
    import anndata as ad
    import scanpy as sc

    plt = _figure()
    both = ad.concat({"real": real, "generated": generated}, label="origin", index_unique="-")
    both.obs[color] = both.obs[color].astype(str)
    sc.pp.pca(both, n_comps=min(30, both.n_vars - 1, both.n_obs - 1), random_state=seed)
    with torch_threads_kept():
        sc.pp.neighbors(both, random_state=seed)
        sc.tl.umap(both, random_state=seed)
    xy = both.obsm["X_umap"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key in zip(axes, ["origin", color]):
        values = both.obs[key].astype(str).to_numpy()
        for i, cat in enumerate(sorted(set(values), reverse=key == "origin")):  # real first, under generated
            sel = values == cat
            colour = ORIGIN_COLOURS[cat] if key == "origin" else plt.cm.tab20(i % 20)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.6, label=cat, color=colour)
        ax.set_title(f"UMAP coloured by {key}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    _save(fig, path)
    plt.close(fig)



METRIC_TITLES = {"spread": "spread (generated / real variance)"}


def metric_bars(table, path: str, metrics=("W1", "MMD", "mean_r2", "spread")) -> None:
    """One panel per metric: a bar per group, with the noise floor as a black tick where known
    (for the spread too: two sets of real cells are not 1.0 apart in a PC space fitted on one),
    the floor at the generated set's size as a grey one, and the per-group Gaussian baseline as a
    blue diamond."""
    plt = _figure()
    metrics = [m for m in metrics if m in table.columns]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), max(3, 0.3 * len(table) + 1.5)), squeeze=False)
    y = np.arange(len(table))
    for ax, metric in zip(axes[0], metrics):
        ax.barh(y, table[metric].to_numpy(), color="#d62728", alpha=0.8, label="generated vs real")
        floor = f"floor_{metric}"
        if floor in table.columns:
            ax.scatter(table[floor].to_numpy(), y, marker="|", s=200, color="black", label="noise floor (real vs real)")
        if f"floor_sized_{metric}" in table.columns:  # W1 falls with the number of cells: the floor at the generated size
            ax.scatter(table[f"floor_sized_{metric}"].to_numpy(), y, marker="|", s=200, color="grey",
                       label="noise floor at the generated size")
        if f"gaussian_{metric}" in table.columns:  # the trivial baseline: a per-group Gaussian of the floor cells
            ax.scatter(table[f"gaussian_{metric}"].to_numpy(), y, marker="d", s=30, color="#1f77b4",
                       label="per-group Gaussian (baseline)")
        ax.set_yticks(y, [str(g) for g in table.index], fontsize=7)
        ax.set_title(METRIC_TITLES.get(metric, metric))
        ax.invert_yaxis()
    # above the panels (saved with bbox_inches="tight"), where it hides no bar
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def grouped_bars(table, columns, path: str, title: str = "", labels=None) -> None:
    """Horizontal grouped bars: one group of bars per row of ``table``, one bar per column."""
    plt = _figure()
    columns = [c for c in columns if c in table.columns]
    labels = labels or columns
    n = len(columns)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * n * len(table) + 1.5)))
    y = np.arange(len(table))
    height = 0.8 / max(n, 1)
    for i, (col, label) in enumerate(zip(columns, labels)):
        ax.barh(y + (i - (n - 1) / 2) * height, table[col].to_numpy(dtype=float), height=height, label=label,
                color=plt.cm.tab10(i % 10))
    ax.set_yticks(y, [str(g) for g in table.index], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best", frameon=False)
    _save(fig, path)
    plt.close(fig)


def mean_scatter(pairs: dict, path: str, xlabel: str = "real mean", ylabel: str = "predicted mean") -> None:
    """One panel per group: per-gene means, predicted against real (scGen's regression plot)."""
    plt = _figure()
    n = len(pairs)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, (x, y)) in zip(axes.ravel(), pairs.items()):
        ax.scatter(x, y, s=3, alpha=0.5, color="#1f77b4")
        lim = [0, float(max(np.max(x), np.max(y))) * 1.05]
        ax.plot(lim, lim, color="black", lw=0.8)
        r = np.corrcoef(x, y)[0, 1] if np.std(x) > 0 and np.std(y) > 0 else float("nan")
        ax.set_title(f"{name}  r^2={r * r:.3f}", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def embedding_umaps(adata, keys, batch_key: str, label_key: str, path: str, seed: int = 0) -> None:
    """A UMAP of each embedding in obsm, coloured by batch (top row) and by label (bottom row)."""
    import anndata as ad
    import scanpy as sc

    plt = _figure()
    fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), 8), squeeze=False)
    for j, key in enumerate(keys):
        tmp = ad.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=adata.obs[[batch_key, label_key]].astype(str))
        tmp.obsm["emb"] = np.asarray(adata.obsm[key], dtype=np.float32)
        with torch_threads_kept():
            sc.pp.neighbors(tmp, use_rep="emb", random_state=seed)
            sc.tl.umap(tmp, random_state=seed)
        xy = tmp.obsm["X_umap"]
        for i, col in enumerate((batch_key, label_key)):
            ax = axes[i][j]
            values = tmp.obs[col].to_numpy()
            for c, cat in enumerate(sorted(set(values))):
                sel = values == cat
                ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.6, label=cat, color=plt.cm.tab20(c % 20))
            ax.set_title(f"{key} by {col}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == len(keys) - 1:
                ax.legend(markerscale=3, fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    _save(fig, path)
    plt.close(fig)
