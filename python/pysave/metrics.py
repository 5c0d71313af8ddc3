"""Evaluation protocols shipped with pysave (``../shared/notes/evaluation.md``).

Generation fidelity (the CFGen protocol used by SAVE's Tables 1-3): real cells define the space
(highly variable genes, ``seurat_v3`` on counts, among the genes every scored set has; then
log1p(CP10k) over those HVGs; 30 PCs fitted on the real cells only); generated cells are
log-normalized the same way (taken as they are when already log-normalized on exactly those
genes, renormalized over them when log-normalized over more, e.g. pysave's output over all the
genes of a model), centred with the real gene means and projected on the real PCs. Per group:
exact W1 / W2 (POT ``ot.emd2``, uniform weights, Euclidean cost, each side subsampled to at most
1,000 cells with a fixed seed), MMD^2 with a sum of RBF kernels (sigma in 0.01 ... 100, biased
estimator, both sides cut to the same size), per-gene mean R^2 and Pearson r, and the spread
(generated total variance in the PC space over the real cells'; it shows under-dispersed output,
which W1 rewards on small groups); the unweighted mean over groups; and the noise floor: the same
metrics between two disjoint sets of real cells.

Perturbation (the scGen protocol): Pearson r and R^2 (= r^2, as scGen's ``linregress``) of
per-gene means over all genes and over the top-100 DEGs (Wilcoxon, stimulated vs control in the
held-out type, real data), plus sklearn's ``r2_score`` (which can be negative).

Batch correction (scIB through scib-metrics, an optional dependency: ``pip install "pysave[eval]"``):
``scib_metrics.benchmark.Benchmarker`` with the metric sets passed explicitly (BIO_METRICS,
BATCH_METRICS: scib-metrics 0.5.10's set, where BRAS replaced silhouette batch), raw scores
(``min_max_scale=False``), Bio conservation and Batch correction = the mean of their metrics,
Total = 0.6 Bio + 0.4 Batch. kBET's diffusion eigenvectors (scipy's ``eigsh``) start from a
vector drawn from the seed, so that a score depends on the data and the seed alone.

Every result records its protocol, parameters and seed.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import PySaveError, warn_user

# 2: a log-normalized layer (e.g. save_corrected) is scored as it is; version 1 log-normalized it again.
# 3: log-normalized cells over more genes than those compared are renormalized over them (version 2
# took them as they were, against real cells normalized over the HVGs alone); generation adds
# the spread. Counts, and data already on the compared genes, score as in version 2.
# 4: batch correction's kBET starts ARPACK from a vector drawn from the seed (``_seeded_arpack``);
# in version 3 the start depended on the process's earlier ARPACK calls. Generation and
# perturbation score as in version 3.
PROTOCOL_VERSION = "4"
SCIB_METRICS_VERSION = "0.5.10"  # pinned in pyproject's "eval" extra; other versions are refused
BIO_METRICS = ("isolated_labels", "nmi_ari_cluster_labels_kmeans", "silhouette_label", "clisi_knn")
BATCH_METRICS = ("bras", "ilisi_knn", "kbet_per_label", "graph_connectivity", "pcr_comparison")
SIGMAS = (0.01, 0.1, 1.0, 10.0, 100.0)
MAX_CELLS = 1000
# A total variance in 30 dimensions from 2-9 cells swings by 2-10x between samples (pbmc_3tech's
# floor: 0.2-3.8 on such groups); from 10 cells on the per-group ratios are stable.
MIN_SPREAD_CELLS = 10
# Draws of the size-matched floor (floor_sized_*) per group, averaged: on pbmc_3tech's small groups
# one draw's mean W1 moved by up to 0.55 (4%) between draws.
FLOOR_SIZED_DRAWS = 3
# Keys the per-group Gaussian's draws apart from the size-matched floor's (both are seeded per group,
# so a group's numbers do not depend on which other groups were generated).
GAUSSIAN_STREAM = 7


# ----------------------------------------------------------------------------- expression
def _dense(X) -> np.ndarray:
    # Row-major float64 always, so that a column-major copy of the same values (an R matrix
    # through reticulate) reaches the PCA as a layer does.
    return np.ascontiguousarray(X.todense() if sp.issparse(X) else X, dtype=np.float64)


def is_log_normalized(adata, layer: str | None = None) -> bool:
    """pysave outputs say so in uns (for X); otherwise non-integer values mean log-normalized."""
    info = adata.uns.get("pysave", {}) if hasattr(adata, "uns") else {}
    if layer is None and isinstance(info, dict) and str(info.get("X", "")).startswith("log1p"):
        return True
    X = adata.X if layer is None else adata.layers[layer]
    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    vals = vals[: 100_000]
    return bool(vals.size) and bool(np.any(np.abs(vals - np.round(vals)) > 1e-3))


def log_normalized(adata, layer: str | None = None) -> np.ndarray:
    """log1p(CP10k) as a dense matrix; data already log-normalized (X or a layer, such as
    pysave's "save_corrected") are returned as they are."""
    X = _dense(adata.X if layer is None else adata.layers[layer])
    return X if is_log_normalized(adata, layer) else _cp10k_log1p(X)


def _cp10k_log1p(X: np.ndarray) -> np.ndarray:
    """Each row scaled to 1e4 in total (empty rows left at 0), then log1p."""
    lib = X.sum(1, keepdims=True)
    lib[lib == 0] = 1
    return np.log1p(X / lib * 1e4)


def renormalized_on(adata, genes, layer: str | None = None) -> bool:
    """Whether ``log_normalized_on`` renormalizes the data over ``genes``: log-normalized data
    over more genes than those (``genes`` are among the data's, names unique in an AnnData)."""
    return len(genes) < adata.n_vars and is_log_normalized(adata, layer)


def log_normalized_on(adata, genes, layer: str | None = None) -> np.ndarray:
    """log1p(CP10k) of ``genes`` with each cell's total taken over those genes, as the protocol
    normalizes the real cells after the HVG subset. Counts are subset, then normalized;
    log-normalized data are kept as they are when ``genes`` are all their genes, and otherwise
    renormalized over them (expm1, subset, rescale to 1e4, log1p): pysave's output over 20,000
    genes is then normalized like real cells subset to 2,000 HVGs."""
    genes = list(genes)
    missing = [g for g in genes if g not in set(adata.var_names)]
    if missing:
        raise PySaveError(f"{len(missing)} genes of the reference space are missing from the data (e.g. {missing[:3]}); "
                          "compare cells in the same gene space.")
    subset = adata[:, genes]
    if not renormalized_on(adata, genes, layer):
        return log_normalized(subset, layer)
    return _cp10k_log1p(np.expm1(_dense(subset.X if layer is None else subset.layers[layer])))


@dataclass
class ReferenceSpace:
    """The real cells' PCA space: genes, their means, and the components."""

    genes: list[str]
    hvg_flavor: str
    mean: np.ndarray
    components: np.ndarray  # (n_pcs, n_genes)

    def log_normalized(self, adata) -> np.ndarray:
        """The data's log1p(CP10k) over the space's genes (``log_normalized_on``)."""
        return log_normalized_on(adata, self.genes)

    def to_pcs(self, x: np.ndarray) -> np.ndarray:
        """Log-normalized values (cells x the space's genes) centred and projected on the PCs."""
        return (x - self.mean) @ self.components.T

    def project(self, adata) -> np.ndarray:
        return self.to_pcs(self.log_normalized(adata))


def fit_reference_space(real, n_hvg: int = 2000, n_pcs: int = 30, counts_layer: str | None = None, seed: int = 0) -> ReferenceSpace:
    """HVGs (seurat_v3 on counts; all genes if fewer) and a PCA fitted on the real cells only,
    log-normalized over the HVGs (``log_normalized_on``)."""
    import scanpy as sc
    from sklearn.decomposition import PCA

    counts = real.copy()
    if counts_layer is not None:
        counts.X = counts.layers[counts_layer]
    flavor = "all genes"
    if counts.n_vars > n_hvg:
        if is_log_normalized(counts):
            raise PySaveError("the real cells must hold raw counts (seurat_v3 HVGs are computed on counts); pass counts_layer=.")
        try:
            sc.pp.highly_variable_genes(counts, n_top_genes=n_hvg, flavor="seurat_v3")
            flavor = "seurat_v3"
        except ImportError as err:
            raise PySaveError("seurat_v3 highly variable genes need scikit-misc: pip install scikit-misc (or pysave[eval]).") from err
        genes = counts.var_names[counts.var["highly_variable"].to_numpy()].tolist()
    else:
        genes = counts.var_names.tolist()
    X = log_normalized_on(counts, genes)
    k = int(min(n_pcs, X.shape[0] - 1, X.shape[1]))
    if k < 1:
        raise PySaveError("too few real cells or genes to fit a PCA space.")
    pca = PCA(n_components=k, random_state=seed, svd_solver="full").fit(X)
    return ReferenceSpace(genes, flavor, pca.mean_, pca.components_)


# ----------------------------------------------------------------------------- distances
def _subsample(x: np.ndarray, n: int, rng) -> np.ndarray:
    return x if len(x) <= n else x[np.sort(rng.choice(len(x), n, replace=False))]


def wasserstein(x: np.ndarray, y: np.ndarray, p: int = 1, max_cells: int = MAX_CELLS, seed: int = 0) -> float:
    """Exact W_p (p = 1 or 2) with uniform weights and Euclidean ground distance."""
    import ot

    rng = np.random.default_rng(seed)
    x, y = _subsample(x, max_cells, rng), _subsample(y, max_cells, rng)
    cost = ot.dist(x, y, metric="euclidean")
    if p == 2:
        cost = cost ** 2
    value = ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost, numItermax=10_000_000)
    return float(value if p == 1 else np.sqrt(value))


def mmd_rbf(x: np.ndarray, y: np.ndarray, sigmas=SIGMAS, max_cells: int = MAX_CELLS, seed: int = 0) -> float:
    """Biased MMD^2 with k = sum over sigma of exp(-|x - y|^2 / (2 sigma^2)); equal sizes."""
    rng = np.random.default_rng(seed)
    n = min(len(x), len(y), max_cells)
    x, y = _subsample(x, n, rng), _subsample(y, n, rng)

    def kernel(a, b):
        d2 = np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T, 0)
        return sum(np.exp(-d2 / (2 * s ** 2)) for s in sigmas)

    return float(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())


def mean_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-gene means of two groups: Pearson r, R^2 = r^2, and sklearn's r2_score(a, b)."""
    from sklearn.metrics import r2_score

    ma, mb = a.mean(0), b.mean(0)
    r = float(np.corrcoef(ma, mb)[0, 1]) if ma.std() > 0 and mb.std() > 0 else float("nan")
    return {"pearson_r": r, "r2": r * r, "r2_score": float(r2_score(ma, mb))}


def _distances(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    return {"W1": wasserstein(x, y, 1, seed=seed), "W2": wasserstein(x, y, 2, seed=seed), "MMD": mmd_rbf(x, y, seed=seed),
            "spread": spread_ratio(x, y)}


def _mean_over_draws(real: np.ndarray, draw, seed: int) -> dict:
    """``_distances`` of ``real`` to ``draw(d)`` for d in 0..FLOOR_SIZED_DRAWS-1, averaged."""
    draws = [_distances(real, draw(d), seed) for d in range(FLOOR_SIZED_DRAWS)]
    return {k: float(np.mean([x[k] for x in draws])) for k in draws[0]}


def spread_ratio(real: np.ndarray, other: np.ndarray, min_cells: int = MIN_SPREAD_CELLS) -> float:
    """Total variance of ``other`` over that of ``real`` (both cells x PCs); NaN when either side
    has fewer than ``min_cells`` cells. Below the noise floor's ratio, ``other`` is under-dispersed;
    W1 on small groups rewards that (a narrow set sits close to every held-out cell), so read W1
    next to this. In the protocol's space, fitted on ``real``, even other real cells score below 1."""
    if min(len(real), len(other)) < min_cells:
        return float("nan")
    real_var = float(np.var(real, axis=0, ddof=1).sum())
    return float(np.var(other, axis=0, ddof=1).sum()) / real_var if real_var > 0 else float("nan")


# ----------------------------------------------------------------------------- protocols
def _groups(adata, keys: list[str], what: str = "real cells") -> pd.Series:
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise PySaveError(f"group column(s) {missing} are not in the {what}' obs; it has {list(adata.obs.columns)}. Every set "
                          "scored needs the group columns.")
    return adata.obs[keys].astype(str).agg(" | ".join, axis=1)


def generation_fidelity(real, generated, group_keys, floor=None, n_hvg: int = 2000, n_pcs: int = 30,
                        counts_layer: str | None = None, seed: int = 0) -> dict:
    """Per-group W1/W2/MMD in the real cells' PCA space, per-gene mean agreement, and the noise floor.

    ``real``: held-out real cells (raw counts). ``generated``: cells to score (log-normalized
    pysave output, or counts). ``floor``: other real cells of the same groups, disjoint from
    ``real`` (e.g. the training cells): scored the same way, they give the noise floor
    (``floor_*``), and drawn at each group's generated size, the size-matched floor
    (``floor_sized_*``, :func:`floor_cells_like`); and a Gaussian fitted to each group's floor
    cells in the PC space, drawn at the generated size (``gaussian_*``, :func:`gaussian_like`):
    the trivial baseline, which on small groups lands close to the floor.
    Returns ``{"per_group": DataFrame, "mean": dict, "protocol": dict}``.
    """
    keys = [group_keys] if isinstance(group_keys, str) else list(group_keys)
    # the groups first: a missing column should fail before the PCA is fitted
    g_real, g_gen = _groups(real, keys).to_numpy(), _groups(generated, keys, "generated cells").to_numpy()
    g_floor = _groups(floor, keys, "floor cells").to_numpy() if floor is not None else None
    # HVGs among the genes every set has; each set normalized over the HVGs (log_normalized_on).
    # Log-normalized input over more genes is renormalized: taken as it was, real pbmc4k cells
    # given as log1p(CP10k) over all 15,195 genes (as pysave writes its output) scored 1.6x the floor.
    sets = [(a, n) for a, n in ((real, "real"), (generated, "generated"), (floor, "floor")) if a is not None]
    shared = shared_genes([a for a, _ in sets], [n for _, n in sets])
    space = fit_reference_space(real if len(shared) == real.n_vars else real[:, shared], n_hvg, n_pcs, counts_layer, seed)
    renormalized = renormalized_on(generated, space.genes)
    info = generated.uns.get("pysave", {})
    if renormalized and isinstance(info, dict) and info.get("output") == "mean":
        # expm1 of a mean of logs is not an expression profile (Jensen), so this renormalization is
        # only approximate for decoder means; sampled counts are log1p(CP10k) of real-like counts.
        warn_user(f"the generated cells are decoder means (output='mean') over {generated.n_vars:,} genes, renormalized "
                  f"over the {len(space.genes):,} compared genes as if they were log1p(CP10k) of counts, which they "
                  "are not: their scores are approximate. Score sampled counts (generate(output='sample'), the "
                  "default; CLI --output-kind sample; R GenerateCells(expression = \"sample\")), as the protocol does.")
    x_real, x_gen = space.log_normalized(real), space.log_normalized(generated)
    z_real, z_gen = space.to_pcs(x_real), space.to_pcs(x_gen)
    if floor is not None:
        x_floor = space.log_normalized(floor)
        z_floor = space.to_pcs(x_floor)
    rows = []
    for index, group in enumerate(sorted(set(g_real))):
        r, g = g_real == group, g_gen == group
        if r.sum() < 2 or g.sum() < 2:
            continue
        row = {"group": group, "n_real": int(r.sum()), "n_generated": int(g.sum())}
        row.update(_distances(z_real[r], z_gen[g], seed))
        row.update({f"mean_{k}": v for k, v in mean_agreement(x_real[r], x_gen[g]).items()})
        if floor is not None:
            f = np.flatnonzero(g_floor == group)
            if len(f) >= 2:
                row["n_floor"] = len(f)
                row.update({f"floor_{k}": v for k, v in _distances(z_real[r], z_floor[f], seed).items()})
                row["floor_mean_r2"] = mean_agreement(x_real[r], x_floor[f])["r2"]
                n = int(g.sum())
                sized = _mean_over_draws(z_real[r], lambda d: z_floor[floor_cells_like(f, n, np.random.default_rng([seed, index, d]))], seed)
                row.update({f"floor_sized_{k}": v for k, v in sized.items()})
                # The trivial baseline a generator should reach: a Gaussian of the floor cells, at the generated size.
                gauss = _mean_over_draws(z_real[r], lambda d: gaussian_like(z_floor[f], n, np.random.default_rng([seed, index, GAUSSIAN_STREAM, d])),
                                         seed)
                row.update({f"gaussian_{k}": v for k, v in gauss.items()})
        rows.append(row)
    if not rows:
        raise PySaveError(f"no group of {keys} has at least 2 real and 2 generated cells; check the group key and the generated conditions.")
    table = pd.DataFrame(rows).set_index("group")
    numeric = table.select_dtypes("number").drop(columns=[c for c in table.columns if c.startswith("n_")])
    protocol = {"name": "generation_fidelity", "version": PROTOCOL_VERSION, "group_keys": keys, "hvg_flavor": space.hvg_flavor,
                "n_hvg": len(space.genes), "n_pcs": int(space.components.shape[0]), "max_cells": MAX_CELLS,
                "mmd_sigmas": list(SIGMAS), "mmd": "biased, equal sizes", "wasserstein": "exact (ot.emd2), Euclidean",
                "spread": f"total variance in the PC space, generated / real (read against floor_spread); groups with "
                          f"fewer than {MIN_SPREAD_CELLS} cells on either side get none",
                "normalization": "HVGs among the genes all sets share, then log1p(CP10k) over the HVGs; log-normalized "
                                 "input over more genes is renormalized over them",
                "floor_sized": f"floor cells drawn at each group's generated size (with replacement only where the floor has "
                               f"fewer), mean of {FLOOR_SIZED_DRAWS} draws: what reproducing the floor cells would score at "
                               "that size; the floor itself uses all of them, and W1 falls with the number of cells",
                "gaussian": f"a Gaussian (mean and covariance) fitted to each group's floor cells in the PC space, drawn at the "
                            f"group's generated size, mean of {FLOOR_SIZED_DRAWS} draws: the trivial baseline a generator should "
                            "reach (on small groups it lands close to the floor)",
                "n_genes_shared": len(shared), "n_genes_real": int(real.n_vars), "generated_renormalized": bool(renormalized),
                "seed": seed, "groups_scored": int(len(table))}
    return {"per_group": table, "mean": numeric.mean().to_dict(), "protocol": protocol}


def floor_cells_like(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of the floor's ``rows`` at random: the size-matched floor (``floor_sized_*``).

    The noise floor compares the real cells with all floor cells, often several times as many as
    a generated set of the real set's size, and W1 falls with the number of points: on the
    benchmarks' 80/20 splits the training cells drawn at the test size score 1.01-1.03x the
    floor's W1 (benchmarks/README.md, "What a perfect generator scores"). Drawn without
    replacement where the floor has ``n`` cells or more."""
    return rng.choice(rows, n, replace=len(rows) < n)


def gaussian_like(z: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of a Gaussian fitted to the points ``z`` (cells x PCs): their mean and covariance,
    with 1e-6 on the diagonal so that groups of fewer cells than PCs can be drawn from. The
    per-group Gaussian baseline (``gaussian_*`` of :func:`generation_fidelity`, and the benchmarks')."""
    cov = np.cov(z.T) + 1e-6 * np.eye(z.shape[1])
    return rng.multivariate_normal(z.mean(0), cov, size=n)


def shared_genes(datasets, names=None) -> list[str]:
    """The genes every dataset has, in the first one's order; an error when they share too few.
    With ``names`` (one per dataset), a PySaveWarning says so when some set loses genes."""
    common = set(datasets[0].var_names)
    for a in datasets[1:]:
        common &= set(a.var_names)
    genes = [g for g in datasets[0].var_names if g in common]
    if len(genes) < 2:
        raise PySaveError(f"the sets to compare share {len(genes)} gene names (of {', '.join(str(a.n_vars) for a in datasets)}); "
                          "give them the same var_names (e.g. all gene symbols or all Ensembl IDs).")
    if names is not None and any(a.n_vars > len(genes) for a in datasets):
        sizes = ", ".join(f"{name} {a.n_vars:,}" for name, a in zip(names, datasets))
        warn_user(f"scoring on the {len(genes):,} genes all sets share ({sizes}): e.g. a model's genes against real "
                  "cells with more. If that is not what you meant, check that both hold the same genes.")
    return genes


def pc_space_distances(z_real: np.ndarray, groups_real: np.ndarray, z_other: np.ndarray, groups_other: np.ndarray,
                       seed: int = 0) -> pd.DataFrame:
    """W1/W2/MMD per group between two sets of points already in the reference PC space
    (for baselines that generate PC coordinates directly, e.g. a per-group Gaussian)."""
    rows = []
    for group in sorted(set(groups_real)):
        r, o = groups_real == group, groups_other == group
        if r.sum() >= 2 and o.sum() >= 2:
            rows.append({"group": group, "n_real": int(r.sum()), "n_generated": int(o.sum()),
                         **_distances(z_real[r], z_other[o], seed)})
    return pd.DataFrame(rows).set_index("group")


def perturbation_agreement(control, stimulated_real, predicted, n_degs: int = 100) -> dict:
    """scGen protocol on one held-out cell type: mean agreement on all genes and the top DEGs.

    ``control`` and ``stimulated_real``: real cells (counts or log-normalized) of that type;
    ``predicted``: predicted stimulated cells. Genes are taken from ``predicted``.
    """
    import anndata as ad
    import scanpy as sc

    genes = shared_genes([predicted, stimulated_real, control])
    ctrl, stim, pred = (log_normalized_on(a, genes) for a in (control, stimulated_real, predicted))  # over the shared genes
    both = ad.AnnData(np.vstack([ctrl, stim]), obs=pd.DataFrame({"condition": ["control"] * len(ctrl) + ["stimulated"] * len(stim)}))
    both.var_names = genes
    both.obs["condition"] = both.obs["condition"].astype("category")
    sc.tl.rank_genes_groups(both, "condition", groups=["stimulated"], reference="control", method="wilcoxon")
    degs = [str(g) for g in both.uns["rank_genes_groups"]["names"]["stimulated"][:n_degs]]
    idx = [genes.index(g) for g in degs]
    out = {"all_genes": mean_agreement(stim, pred), f"top{n_degs}_degs": mean_agreement(stim[:, idx], pred[:, idx]),
           "control_baseline_all": mean_agreement(stim, ctrl), f"control_baseline_top{n_degs}": mean_agreement(stim[:, idx], ctrl[:, idx]),
           "degs": degs, "protocol": {"name": "perturbation_agreement", "version": PROTOCOL_VERSION, "n_degs": n_degs,
                                       "de_test": "wilcoxon (scanpy), stimulated vs control, real cells",
                                       "r2": "squared Pearson r of per-gene means (scGen linregress)",
                                       "r2_score": "sklearn r2_score(real means, predicted means)"}}
    return out


# ----------------------------------------------------------------------------- batch correction
def _scib_metrics():
    """Import scib-metrics (optional), checking the pinned version."""
    try:
        import scib_metrics
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation
    except ImportError as err:
        raise PySaveError(f"batch-correction metrics need scib-metrics {SCIB_METRICS_VERSION} (with jax): "
                          f'pip install "pysave[eval]" (import failed: {err}).') from err
    version = getattr(scib_metrics, "__version__", "unknown")
    if version != SCIB_METRICS_VERSION:
        raise PySaveError(f"scib-metrics {version} is installed but the protocol is pinned to {SCIB_METRICS_VERSION} "
                          f'(metric defaults change between versions): pip install "pysave[eval]" or '
                          f"scib-metrics=={SCIB_METRICS_VERSION}.")
    return Benchmarker, BioConservation, BatchCorrection, version


def unintegrated_pca(adata, n_pcs: int = 50, layer: str | None = None, seed: int = 0) -> np.ndarray:
    """PCA of log1p(CP10k) expression (the "unintegrated" baseline and scIB's pre-integration
    embedding for PCR comparison); counts are log-normalized first."""
    from sklearn.decomposition import PCA

    X = log_normalized(adata, layer)
    k = int(min(n_pcs, X.shape[0] - 1, X.shape[1]))
    return PCA(n_components=k, random_state=seed, svd_solver="full").fit_transform(X).astype(np.float32)


@contextmanager
def torch_threads_kept():
    """Torch's intra-op thread count, put back as it was when the block ends.

    numba's OpenMP threading layer, which pynndescent starts (scib-metrics' neighbours, scanpy's
    neighbours and UMAP), sets OpenMP's thread count to every core, and torch reads the same
    setting: a session that had asked torch for 1 thread trained its next model on 2 threads,
    with other weights than a fresh session's and, beside another busy process, 8x slower.
    """
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def _numpy_global_seed(seed: int):
    """numpy's global generator seeded for the block (scib-metrics draws from it), and the caller's
    state put back after, so that scoring neither depends on nor changes the user's own stream."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def _seeded_arpack(seed: int):
    """scipy's ``eigsh`` started from a vector drawn from ``seed`` where the caller gives none.

    scib-metrics' kBET embeds each label's kNN graph with ``eigsh`` and no start vector, so ARPACK
    starts from its own generator, which every earlier ARPACK call in the process has advanced:
    two copies of one embedding, scored in one run, got kBET 0.114 and 0.226 on a label of the
    bundled PBMC data (scIB Total 0.512 / 0.521) depending on the calls made before. Drawn as
    scanpy's diffusion map draws it, the start makes the score a function of the data and the seed.
    """
    import scipy.sparse.linalg as sla

    eigsh = sla.eigsh

    def seeded(A, *args, **kwargs):
        if len(args) < 5 and kwargs.get("v0") is None:  # v0 is eigsh's sixth argument
            kwargs["v0"] = np.random.default_rng(seed).uniform(-1, 1, A.shape[0])
        return eigsh(A, *args, **kwargs)

    with mock.patch.object(sla, "eigsh", seeded):
        yield


def batch_correction(adata, batch_key: str, label_key: str, embedding_keys, pre_integrated_key: str | None = None,
                     bio_metrics=BIO_METRICS, batch_metrics=BATCH_METRICS, n_jobs: int = 1, seed: int = 0) -> dict:
    """scIB Bio conservation / Batch correction / Total of each embedding in ``obsm``.

    ``embedding_keys``: obsm keys to score (e.g. X_pca, X_harmony, X_scVI, X_save). The
    pre-integration embedding (for PCR comparison) is ``obsm[pre_integrated_key]``, or a 50-PC
    PCA of log1p(CP10k) X (``unintegrated_pca``). Returns ``{"table": DataFrame (one row per
    embedding: every metric, "Bio conservation", "Batch correction", "Total"), "protocol": dict}``.
    Needs scib-metrics (``pip install "pysave[eval]"``); without it a PySaveError says so.
    """
    keys = [embedding_keys] if isinstance(embedding_keys, str) else list(embedding_keys)
    for key in (batch_key, label_key):
        if key not in adata.obs.columns:
            raise PySaveError(f"{key!r} is not a column of obs; available: {list(adata.obs.columns)}.")
    missing = [k for k in keys + ([pre_integrated_key] if pre_integrated_key else []) if k not in adata.obsm]
    if missing:
        raise PySaveError(f"embedding(s) {missing} are not in obsm (available: {list(adata.obsm.keys())}).")
    if not keys:
        raise PySaveError("no embedding to score; name at least one obsm key.")
    if adata.obs[batch_key].nunique() < 2:
        raise PySaveError(f"obs[{batch_key!r}] has a single batch; batch correction needs at least two.")
    unknown = sorted(set(bio_metrics) - set(BIO_METRICS) - {"nmi_ari_cluster_labels_leiden"}) + \
        sorted(set(batch_metrics) - set(BATCH_METRICS))
    if unknown:
        raise PySaveError(f"unknown scIB metric(s) {unknown}; bio: {BIO_METRICS}, batch: {BATCH_METRICS}.")
    Benchmarker, BioConservation, BatchCorrection, version = _scib_metrics()
    import anndata as ad

    obs = pd.DataFrame({batch_key: adata.obs[batch_key].astype(str).to_numpy(),
                        label_key: adata.obs[label_key].astype(str).to_numpy()}, index=adata.obs_names.astype(str))
    work = ad.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=obs)
    for k in keys:
        work.obsm[k] = np.asarray(adata.obsm[k], dtype=np.float32)
    pre = pre_integrated_key or "_pysave_pre_pca"
    work.obsm[pre] = (np.asarray(adata.obsm[pre_integrated_key], dtype=np.float32) if pre_integrated_key
                      else unintegrated_pca(adata, seed=seed))
    # Every field is set, so the set does not change when scib-metrics' defaults do.
    bio = BioConservation(**{f: f in bio_metrics for f in BioConservation.__dataclass_fields__})
    batch = BatchCorrection(**{f: f in batch_metrics for f in BatchCorrection.__dataclass_fields__})
    bench = Benchmarker(work, batch_key=batch_key, label_key=label_key, embedding_obsm_keys=keys,
                        pre_integrated_embedding_obsm_key=pre, bio_conservation_metrics=bio,
                        batch_correction_metrics=batch, n_jobs=n_jobs, progress_bar=False)
    with _seeded_arpack(seed), _numpy_global_seed(seed), torch_threads_kept():
        bench.benchmark()
    raw = bench.get_results(min_max_scale=False, clean_names=False)
    types = raw.loc["Metric Type"]
    scores = raw.drop(index="Metric Type").astype(float)
    bio_cols = [c for c in scores.columns if types[c] == "Bio conservation"]
    batch_cols = [c for c in scores.columns if types[c] == "Batch correction"]
    table = scores[bio_cols + batch_cols].copy()
    table["Bio conservation"] = table[bio_cols].mean(axis=1)
    table["Batch correction"] = table[batch_cols].mean(axis=1)
    table["Total"] = 0.6 * table["Bio conservation"] + 0.4 * table["Batch correction"]
    table.index.name = "embedding"
    protocol = {"name": "batch_correction_scib", "version": PROTOCOL_VERSION, "scib_metrics_version": version,
                "bio_metrics": bio_cols, "batch_metrics": batch_cols, "min_max_scale": False,
                "total": "0.6 * Bio conservation + 0.4 * Batch correction", "batch_key": batch_key, "label_key": label_key,
                "pre_integrated": pre_integrated_key or "PCA (50 PCs) of log1p(CP10k) X",
                "neighbors": "pynndescent (scib-metrics default), k = 15 / 50 / 90",
                "arpack_start": "uniform(-1, 1) drawn from the seed, for every eigsh call (kBET's diffusion map)",
                "seed": seed, "n_cells": int(adata.n_obs)}
    return {"table": table, "protocol": protocol}


# ----------------------------------------------------------------------------- perturbation, per cell type
def perturbation_evaluation(real, predicted, condition_key: str, control: str, stimulated: str,
                            cell_type_key: str | None = None, n_degs: int = 100, seed: int = 0) -> dict:
    """The scGen protocol per held-out cell type (``perturbation_agreement`` for each).

    ``real``: real cells of both conditions (counts or log-normalized); ``predicted``: predicted
    stimulated cells (e.g. ``SAVE.transfer(control_cells, {condition_key: stimulated})``), with
    ``cell_type_key`` in obs (omit it to score all cells as one group). For each cell type with
    >= 2 predicted, >= 4 real stimulated (2 per half of the floor) and >= 2 control cells: PCC and R^2 (= r^2) of per-gene
    means over all genes and over the top ``n_degs`` Wilcoxon DEGs, sklearn ``r2_score``, the
    "control" baseline (predict = the control cells) and the noise floor (one random half of the
    real stimulated cells against the other half). Returns ``{"per_group", "mean", "protocol", "degs"}``.
    """
    if condition_key not in real.obs.columns:
        raise PySaveError(f"{condition_key!r} is not a column of the real cells' obs; available: {list(real.obs.columns)}.")
    values = set(real.obs[condition_key].astype(str))
    for v in (control, stimulated):
        if v not in values:
            raise PySaveError(f"{condition_key} = {v!r} has no real cells (values: {sorted(values)}).")
    if cell_type_key is not None:
        for name, a in (("real", real), ("predicted", predicted)):
            if cell_type_key not in a.obs.columns:
                raise PySaveError(f"{cell_type_key!r} is not a column of the {name} cells' obs; available: {list(a.obs.columns)}.")
        types_real = real.obs[cell_type_key].astype(str).to_numpy()
        types_pred = predicted.obs[cell_type_key].astype(str).to_numpy()
    else:
        types_real, types_pred = np.full(real.n_obs, "all"), np.full(predicted.n_obs, "all")
    shared_genes([predicted, real], ["predicted", "real"])  # says so when the scores use fewer genes than given
    cond = real.obs[condition_key].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    rows, degs = [], {}
    k = f"top{n_degs}_degs"
    for t in sorted(set(types_pred)):
        ctrl, stim, pred = (types_real == t) & (cond == control), (types_real == t) & (cond == stimulated), types_pred == t
        if min(ctrl.sum(), pred.sum()) < 2 or stim.sum() < 4:  # the floor's halves need 2 cells each for the DE test
            continue
        out = perturbation_agreement(real[ctrl], real[stim], predicted[pred], n_degs=n_degs)
        stim_idx = rng.permutation(np.flatnonzero(stim))
        half = len(stim_idx) // 2
        floor = perturbation_agreement(real[ctrl], real[np.sort(stim_idx[:half])], real[np.sort(stim_idx[half:])], n_degs=n_degs)
        row = {"group": t, "n_control": int(ctrl.sum()), "n_stimulated": int(stim.sum()), "n_predicted": int(pred.sum())}
        for name, res in (("all", out["all_genes"]), ("degs", out[k]), ("control_all", out["control_baseline_all"]),
                          ("control_degs", out[f"control_baseline_top{n_degs}"]), ("floor_all", floor["all_genes"]),
                          ("floor_degs", floor[k])):
            row.update({f"{name}_{m}": v for m, v in res.items()})
        rows.append(row)
        degs[t] = out["degs"]
    if not rows:
        raise PySaveError("no cell type has at least 2 control, 4 real stimulated and 2 predicted cells; check the keys and values.")
    table = pd.DataFrame(rows).set_index("group")
    numeric = table.drop(columns=[c for c in table.columns if c.startswith("n_")])
    protocol = {"name": "perturbation_scgen", "version": PROTOCOL_VERSION, "condition_key": condition_key, "control": control,
                "stimulated": stimulated, "cell_type_key": cell_type_key, "n_degs": n_degs,
                "de_test": "wilcoxon (scanpy rank_genes_groups), stimulated vs control, real cells of the type",
                "pearson_r": "Pearson r of per-gene means (log1p CP10k), predicted vs real stimulated",
                "r2": "squared Pearson r (scGen's linregress r^2)", "r2_score": "sklearn r2_score(real means, predicted means)",
                "control_baseline": "the type's real control cells as the prediction",
                "noise_floor": "one random half of the real stimulated cells vs the other half", "seed": seed,
                "groups_scored": int(len(table))}
    return {"per_group": table, "mean": numeric.mean().to_dict(), "protocol": protocol, "degs": degs}
