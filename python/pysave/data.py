"""Data registration and preprocessing (scvi-tools style ``setup_anndata``).

The registry records, for each condition column, its categories plus a trailing [MASK]
slot, so later AnnData objects are encoded the same way. Preprocessing follows the paper:
counts -> normalize to 1e4 -> log1p -> max-abs scaling to [0, 1], with one scaler per batch
when a batch key is named (as the lab's code did) and a global scaler for masked batches.
Matrices are handled in row chunks and stay sparse: only minibatches are densified.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import PySaveError

REGISTRY_KEY = "_pysave"
TARGET_SUM = 1e4
CHUNK_ROWS = 4096
# Dense (cells x genes) blocks made from the data hold at most this many values: CHUNK_ROWS cells
# up to 4,096 genes, fewer at atlas width (559 cells at 30,000 genes), so that a block's float64
# copies stay ~130 MB each, where 4,096 cells of 30,000 genes took ~1 GB each.
DENSE_BLOCK_VALUES = 2 ** 24
MASK = "[MASK]"


def dense_block_rows(n_genes: int, rows: int = CHUNK_ROWS, values: int | None = None) -> int:
    """Rows of a dense block of ``n_genes`` columns: at most ``rows`` and ``values`` values
    (``DENSE_BLOCK_VALUES`` unless given)."""
    values = DENSE_BLOCK_VALUES if values is None else values
    return max(1, min(int(rows), values // max(1, int(n_genes))))


# ----------------------------------------------------------------------------- registry
def _condition_values(adata, key: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise PySaveError(
            f"condition key {key!r} is not a column of adata.obs; available columns: "
            f"{', '.join(map(str, adata.obs.columns)) or '(none)'}. Pass one of these as a condition key."
        )
    col = adata.obs[key]
    n_missing = int(col.isna().sum())
    if n_missing:
        raise PySaveError(
            f"condition column {key!r} has {n_missing} missing value(s); fill them "
            f"(e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)) or drop those cells."
        )
    return col


def _categories_of(col: pd.Series) -> list[str]:
    # Keep a categorical's declared order (minus unused levels); otherwise sort the values
    # as strings, so numeric and string columns give the same, reproducible order.
    if isinstance(col.dtype, pd.CategoricalDtype):
        used = set(col.astype(str))
        return [str(c) for c in col.cat.categories if str(c) in used]
    return sorted(set(col.astype(str)))


def setup_anndata(adata, condition_keys, layer: str | None = None, batch_key: str | None = None) -> dict:
    """Register ``adata`` for SAVE: which obs columns are conditions and where the counts are.

    Parameters
    ----------
    condition_keys
        Categorical columns of ``adata.obs`` to condition on (batch, cell type, stimulation...).
    layer
        Layer holding raw counts; ``None`` means ``adata.X``.
    batch_key
        One of ``condition_keys``; when given, max-abs scalers are fitted per batch.
    """
    if isinstance(condition_keys, str):
        condition_keys = [condition_keys]
    condition_keys = [str(k) for k in condition_keys]
    if not condition_keys:
        raise PySaveError("no condition keys given; name at least one column of adata.obs, e.g. condition_keys=['cell_type'].")
    if len(set(condition_keys)) != len(condition_keys):
        raise PySaveError(f"condition keys are repeated: {condition_keys}; name each column once.")
    if batch_key is not None and batch_key not in condition_keys:
        raise PySaveError(f"batch_key {batch_key!r} must also be one of the condition keys {condition_keys}.")
    validate_shape(adata)
    counts_matrix(adata, layer)  # raises when the layer is missing
    categories = {}
    for key in condition_keys:
        categories[key] = _categories_of(_condition_values(adata, key))
    registry = {
        "condition_keys": condition_keys,
        "categories": categories,
        "layer": layer,
        "batch_key": batch_key,
    }
    adata.uns[REGISTRY_KEY] = {"registry_json": json.dumps(registry)}
    return registry


def get_registry(adata) -> dict:
    entry = adata.uns.get(REGISTRY_KEY)
    if not entry or "registry_json" not in entry:
        raise PySaveError(
            "this AnnData is not set up for SAVE; call pysave.SAVE.setup_anndata(adata, condition_keys=[...]) first."
        )
    return json.loads(entry["registry_json"])


def validate_shape(adata) -> None:
    if adata.n_obs == 0:
        raise PySaveError("the AnnData has zero cells; give a dataset with at least one cell.")
    if adata.n_vars == 0:
        raise PySaveError("the AnnData has zero genes; give a dataset with at least one gene.")


def counts_matrix(adata, layer: str | None):
    if layer is None:
        X = adata.X
    else:
        if layer not in adata.layers:
            raise PySaveError(
                f"layer {layer!r} is not in adata.layers (available: {', '.join(adata.layers.keys()) or 'none'}); "
                "name the layer that holds raw counts, or omit it to use adata.X."
            )
        X = adata.layers[layer]
    if X is None:
        raise PySaveError("adata.X is empty; put raw counts in X or name a counts layer with layer=.")
    return X


def encode_conditions(obs: pd.DataFrame, registry: dict, allow_missing: bool = False) -> np.ndarray:
    """Map condition columns to integer codes; the code ``len(categories)`` is [MASK].

    With ``allow_missing`` a column that is absent, or a missing value, becomes [MASK];
    otherwise both are errors. Unknown values are always errors that list the known ones.
    """
    keys = registry["condition_keys"]
    codes = np.empty((len(obs), len(keys)), dtype=np.int64)
    for j, key in enumerate(keys):
        cats = registry["categories"][key]
        lookup = {c: i for i, c in enumerate(cats)}
        lookup[MASK] = len(cats)
        if key not in obs.columns:
            if not allow_missing:
                raise PySaveError(
                    f"condition column {key!r} is missing from obs; the model was trained with conditions {keys}."
                )
            codes[:, j] = len(cats)
            continue
        col = obs[key]
        missing = col.isna().to_numpy()
        if missing.any() and not allow_missing:
            raise PySaveError(f"condition column {key!r} has {int(missing.sum())} missing value(s); fill or drop them.")
        values = col.astype(object).where(~missing, MASK).astype(str).to_numpy()
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise PySaveError(
                f"unknown value(s) {unknown[:5]} for condition {key!r}; the model knows: "
                f"{', '.join(cats)} (or {MASK} to leave it unspecified)."
            )
        codes[:, j] = [lookup[v] for v in values]
    return codes


# ----------------------------------------------------------------------------- checks
def _iter_rows(X, chunk: int = CHUNK_ROWS):
    n = X.shape[0]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = X[start:stop]
        if sp.issparse(block):
            block = sp.csr_matrix(block)
        else:
            block = np.asarray(block)
        yield start, stop, block


def _values(block) -> np.ndarray:
    return block.data if sp.issparse(block) else block.ravel()


def check_counts(X, what: str = "adata.X") -> np.ndarray:
    """Validate raw counts chunk by chunk; return per-cell library sizes.

    Raises a :class:`PySaveError` for NaN/inf, negative values, non-integer values (with a
    hint when the data look log-normalized) and cells with no counts.
    """
    library = np.zeros(X.shape[0], dtype=np.float64)
    non_integer = 0
    max_value = 0.0
    for start, stop, block in _iter_rows(X):
        vals = np.asarray(_values(block), dtype=np.float64)
        if vals.size:
            if not np.isfinite(vals).all():
                raise PySaveError(
                    f"{what} contains NaN or infinite values; SAVE needs raw counts. Replace or remove them "
                    "(e.g. X[np.isnan(X)] = 0) before training."
                )
            if (vals < 0).any():
                raise PySaveError(
                    f"{what} contains negative values; SAVE needs raw, non-negative counts. If X is scaled or "
                    "centred, put the raw counts in a layer and pass layer='counts' (CLI: --layer counts)."
                )
            non_integer += int(np.count_nonzero(np.abs(vals - np.round(vals)) > 1e-3))
            max_value = max(max_value, float(vals.max()))
        library[start:stop] = np.asarray(block.sum(axis=1)).ravel()
    if non_integer:
        hint = (
            " The values look log-normalized (all below 20)." if max_value < 20 else ""
        )
        raise PySaveError(
            f"{what} holds {non_integer} non-integer value(s); SAVE expects raw counts.{hint} Put raw counts in "
            "adata.X or in a layer and pass layer='counts' (CLI: --layer counts); counts can be recovered from "
            "log1p(CP10k) values with expm1(x) * total_counts / 1e4."
        )
    empty = int(np.count_nonzero(library <= 0))
    if empty:
        raise PySaveError(
            f"{empty} cell(s) have zero total counts; remove them first, e.g. scanpy.pp.filter_cells(adata, min_counts=1)."
        )
    return library


# ----------------------------------------------------------------------------- preprocessing
def log_normalize(block, library: np.ndarray):
    """log1p(counts / library * 1e4) for a row block; sparse stays sparse."""
    factors = (TARGET_SUM / library).astype(np.float32)
    if sp.issparse(block):
        out = sp.diags(factors) @ sp.csr_matrix(block, dtype=np.float32)
        out = sp.csr_matrix(out)
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(block, dtype=np.float32) * factors[:, None])


def normalize_log_profiles(X: np.ndarray, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """In place: each row of log1p values becomes log1p of its expm1 profile rescaled to sum to
    1e4 (scanpy's normalize_total, then log1p), chunk by chunk, by ``log_normalize`` as the input
    was. A decoder's mean is E[log1p] per gene, whose profile does not sum to 1e4 as the input's
    did; rows that are all zero stay zero."""
    chunk = dense_block_rows(X.shape[1], chunk)
    for start in range(0, X.shape[0], chunk):
        block = np.expm1(np.clip(X[start:start + chunk], 0, None, dtype=np.float64))
        total = block.sum(1)
        total[total == 0] = 1.0
        X[start:start + chunk] = log_normalize(block, total)
    return X


def _column_max(block) -> np.ndarray:
    if sp.issparse(block):
        return np.asarray(block.max(axis=0).todense()).ravel() if block.shape[0] else np.zeros(block.shape[1])
    return block.max(axis=0)


@dataclass
class Scalers:
    """Per-gene max-abs scalers, one row per scaler index.

    Without a batch key there is one (global) row. With one, rows 0..B-1 are the batches and
    row B is global: B is also the [MASK] code of the batch condition, so a cell's scaler
    index is simply its batch code, and a masked batch falls back to the global scaler.
    """

    values: np.ndarray  # (n_rows, n_genes), float32, all > 0


def fit_scalers(X, library: np.ndarray, scaler_index: np.ndarray, n_rows: int) -> Scalers:
    maxima = np.zeros((n_rows, X.shape[1]), dtype=np.float32)
    for start, stop, block in _iter_rows(X):
        update_maxima(maxima, log_normalize(block, library[start:stop]), scaler_index[start:stop])
    return finish_scalers(maxima)


def update_maxima(maxima: np.ndarray, lognorm, scaler_rows: np.ndarray) -> None:
    """Fold a row block's per-gene maxima into ``maxima[scaler row]``, in place."""
    for b in np.unique(scaler_rows):
        maxima[b] = np.maximum(maxima[b], _column_max(lognorm[np.flatnonzero(scaler_rows == b)]))


def finish_scalers(maxima: np.ndarray) -> Scalers:
    """Per-batch column maxima -> scalers: the last row (the [MASK] batch) is the global max."""
    maxima = np.array(maxima, dtype=np.float32)
    if maxima.shape[0] > 1:
        maxima[-1] = maxima[:-1].max(axis=0)
    # A gene never expressed (in a batch) gets scale 1 so that 0 stays 0 and nothing divides by 0.
    maxima[maxima <= 0] = 1.0
    return Scalers(maxima)


def scale_rows(lognorm, scaler_rows: np.ndarray):
    """Divide log-normalized rows by their scaler rows and clip to [0, 1]."""
    if sp.issparse(lognorm):
        lognorm = sp.csr_matrix(lognorm)
        row_of = np.repeat(np.arange(lognorm.shape[0]), np.diff(lognorm.indptr))
        lognorm.data = np.minimum(lognorm.data / scaler_rows[row_of, lognorm.indices], 1.0).astype(np.float32)
        return lognorm
    return np.minimum(lognorm / scaler_rows, 1.0).astype(np.float32)


def preprocess(X, library: np.ndarray, scalers: Scalers, scaler_index: np.ndarray) -> sp.csr_matrix:
    """Counts -> [0, 1]-scaled log-normalized CSR matrix, chunk by chunk."""
    chunks = []
    for start, stop, block in _iter_rows(X):
        lognorm = log_normalize(block, library[start:stop])
        chunks.append(sp.csr_matrix(scale_rows(lognorm, scalers.values[scaler_index[start:stop]])))
    return sp.vstack(chunks, format="csr") if len(chunks) > 1 else chunks[0]


def align_genes(adata_var_names, model_genes: list[str]) -> np.ndarray:
    """Column indices of ``model_genes`` in the given var names (documented re-mapping).

    Genes may come in another order and extra genes are ignored; missing model genes are an
    error, since silently filling them would bias every output.
    """
    var = pd.Index(adata_var_names)
    if not var.is_unique:
        dup = var[var.duplicated()].unique()[:5].tolist()
        raise PySaveError(f"gene names are not unique (e.g. {dup}); call adata.var_names_make_unique() first.")
    idx = var.get_indexer(model_genes)
    missing = [g for g, i in zip(model_genes, idx) if i < 0]
    if missing:
        raise PySaveError(
            f"{len(missing)} of the model's {len(model_genes)} genes are missing from the data (e.g. {missing[:5]}); "
            "give data with the genes the model was trained on (same var_names; order and extra genes do not matter)."
        )
    return idx


# ----------------------------------------------------------------------------- library sizes
MIN_GROUP_CELLS = 5


def _log_stats(log_library: np.ndarray) -> list[float]:
    n = len(log_library)
    if n == 0:
        return [0.0, 0.0, 0]
    sd = float(log_library.std(ddof=1)) if n > 1 else 0.0
    return [float(log_library.mean()), sd, int(n)]


def library_statistics(library: np.ndarray, codes: np.ndarray, scaler_index: np.ndarray, n_scaler_rows: int) -> dict:
    """Log library-size distribution of the training cells, for sampled (count) output.

    Returns a JSON-able dict: ``by_scaler`` holds [mean, sd, n] of log(total counts) for each
    scaler row (the batches, then a global row; one global row without a batch key), and
    ``by_combination`` the same for each full condition combination ("code,code,..."), so a
    generated cell draws its library size from cells of its own batch and cell type when the
    training data had at least ``MIN_GROUP_CELLS`` of them, and from its batch (or all cells)
    otherwise.
    """
    log_lib = np.log(np.asarray(library, dtype=np.float64))
    scaler_index = np.asarray(scaler_index)
    by_scaler = [_log_stats(log_lib[scaler_index == b]) for b in range(n_scaler_rows)]
    if n_scaler_rows > 1 or not by_scaler[-1][2]:
        by_scaler[-1] = _log_stats(log_lib)
    keys = np.array([",".join(map(str, row)) for row in np.asarray(codes)])
    by_combination = {}
    for key in np.unique(keys):
        stats = _log_stats(log_lib[keys == key])
        if stats[2] >= MIN_GROUP_CELLS:
            by_combination[str(key)] = stats
    return {"log_library": "natural log of per-cell total counts: [mean, sd, n_cells]", "min_group_cells": MIN_GROUP_CELLS,
            "by_scaler": by_scaler, "by_combination": by_combination}


def library_parameters(stats: dict, codes: np.ndarray, scaler_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell (mean, sd) of log library size: the cell's combination, else its scaler row."""
    by_scaler = np.asarray([s[:2] for s in stats["by_scaler"]], dtype=np.float64)
    mean, sd = by_scaler[np.asarray(scaler_index), 0].copy(), by_scaler[np.asarray(scaler_index), 1].copy()
    combos = stats["by_combination"]
    if combos:
        keys = [",".join(map(str, row)) for row in np.asarray(codes)]
        for i, key in enumerate(keys):
            hit = combos.get(key)
            if hit is not None:
                mean[i], sd[i] = hit[0], hit[1]
    return mean, sd


class LogMeanInverter:
    """Poisson rates whose expected log-normalized value is a given mean.

    A decoder trained on log-normalized values outputs E[log1p(s K)] (s = 1e4 / library), not
    log1p(s E[K]): by Jensen's inequality expm1 of it underestimates the rate, most for genes with
    many zeros. This finds lambda with E[log1p(s K)] = m for K ~ Poisson(lambda), by lookup in a
    table over lambda and s: exact sums for lambda <= 60, a second-order delta method above.
    """

    def __init__(self, n_lambda: int = 512, s_grid=(1e-3, 1e3, 961)):
        from scipy.special import gammaln

        lam = np.r_[0.0, np.logspace(-4, 6, n_lambda - 1)]
        self.log_s = np.linspace(np.log(s_grid[0]), np.log(s_grid[1]), int(s_grid[2]))
        s = np.exp(self.log_s)
        k = np.arange(0, 241, dtype=np.float64)
        small = lam <= 60
        with np.errstate(divide="ignore", invalid="ignore"):
            log_pmf = k[None] * np.log(lam[small])[:, None] - lam[small][:, None] - gammaln(k + 1)[None]
        log_pmf[0] = np.where(k == 0, 0.0, -np.inf)  # lambda = 0: all mass at 0
        table = np.empty((len(s), len(lam)))
        table[:, small] = (np.exp(log_pmf) @ np.log1p(s[:, None] * k[None]).T).T
        big = lam[~small][None]
        sl = s[:, None] * big
        table[:, ~small] = np.log1p(sl) - s[:, None] ** 2 * big / (2 * (1 + sl) ** 2)
        self.table = np.maximum.accumulate(table, axis=1)
        self.lam = lam

    def rates(self, log_mean: np.ndarray, library: np.ndarray) -> np.ndarray:
        """lambda (cells x genes) for target means (log1p(CP10k) units) at the given libraries."""
        log_mean = np.asarray(log_mean, dtype=np.float64)
        bins = np.clip(np.rint((np.log(TARGET_SUM / np.asarray(library)) - self.log_s[0]) /
                               (self.log_s[1] - self.log_s[0])).astype(int), 0, len(self.log_s) - 1)
        out = np.empty_like(log_mean)
        for b in np.unique(bins):
            rows = bins == b
            out[rows] = np.interp(log_mean[rows], self.table[b], self.lam)
        return out


def distinct_rows(codes: np.ndarray, return_counts: bool = False):
    """``np.unique(codes, axis=0, return_inverse=True[, return_counts=True])`` for rows of condition
    codes: (distinct rows, in the same lexicographic order; each row's index among them[; counts]).

    Rows of small non-negative integers go through one integer key per row (first column most
    significant, so the order is np.unique's): 12x faster on a million rows of two conditions
    (0.12 s against 1.47 s), which every plan of a large generation call pays. Other rows (negative,
    not integers, keys past int64) take ``np.unique`` itself."""
    codes = np.asarray(codes)
    radix = None
    if codes.ndim == 2 and codes.size and np.issubdtype(codes.dtype, np.integer) and codes.min() >= 0:
        radix = codes.max(0).astype(np.int64) + 1
        if np.prod(radix.astype(np.float64)) >= 2.0 ** 62:
            radix = None
    if radix is None:
        out = np.unique(codes, axis=0, return_inverse=True, return_counts=return_counts)
        return (out[0], np.asarray(out[1]).reshape(-1), *out[2:])
    weights = np.concatenate([np.cumprod(radix[::-1])[::-1][1:], [1]]).astype(np.int64)
    _, first, inverse, counts = np.unique(codes.astype(np.int64) @ weights, return_index=True, return_inverse=True,
                                          return_counts=True)
    distinct = codes[first]
    return (distinct, inverse.reshape(-1), counts) if return_counts else (distinct, inverse.reshape(-1))


_INVERTER: LogMeanInverter | None = None
# Cells per run of the count draws. Each run of COUNT_STREAM_ROWS consecutive cells of a call has
# its own random streams, keyed by the call's seed and the run's index, so runs are drawn on
# several threads at once and the values depend neither on the number of threads nor on how the
# cells are chunked. Changing it changes every sampled value.
COUNT_STREAM_ROWS = 256
# Threads drawing runs at once (at most the CPUs this process may use, and torch's thread count).
SAMPLE_WORKERS = 8
# A thread draws its run in blocks of rows holding at most this many values, so that its float64
# temporaries stay ~2 MB each however many genes there are (whole runs at 30,000 genes held ~170 MB
# per thread; benchmarks/README.md, "Count draws on several threads"). Each block goes on with its
# run's streams, so the values do not depend on it.
DRAW_BLOCK_VALUES = 2 ** 18


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (a SLURM or
    ``taskset`` allocation on a large node), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def draw_workers(n_runs: int) -> int:
    """Threads for one call's count draws: at most ``SAMPLE_WORKERS``, the CPUs this process may
    use, and torch's intra-op thread count, so ``torch.set_num_threads`` (or ``OMP_NUM_THREADS``)
    bounds the draws as it bounds the networks on a shared node. The values do not depend on it."""
    import torch  # here, not at the top: ``pysave --help`` must not import torch

    return max(1, min(SAMPLE_WORKERS, usable_cpus(), torch.get_num_threads(), n_runs))


class CountStreams:
    """The random streams of one call's count draws, handed out run by run as cells come.

    Run ``r`` (cells ``r * COUNT_STREAM_ROWS`` to the next run's first, counted from the call's
    first cell) draws its Poisson part from ``default_rng([seed, 102, r])`` and the negative
    binomial's Gamma part from ``default_rng([seed, 103, r])``, each consumed cell by cell. A
    run cut by a chunk's end goes on in the next chunk with the same streams, so chunks of any
    size give the same values."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.position = 0  # cells handed out so far
        self._open: tuple | None = None  # (run index, Poisson stream, Gamma stream) of a run cut by a chunk's end

    def take(self, n: int) -> list[tuple[slice, np.random.Generator, np.random.Generator]]:
        """(rows of the next ``n`` cells, Poisson stream, Gamma stream) for each run they touch."""
        runs, start, stop = [], self.position, self.position + int(n)
        for run in range(start // COUNT_STREAM_ROWS, -(-stop // COUNT_STREAM_ROWS)):
            first, end = run * COUNT_STREAM_ROWS, (run + 1) * COUNT_STREAM_ROWS
            if self._open is not None and self._open[0] == run:
                streams = self._open[1:]
            else:
                streams = tuple(np.random.default_rng([self.seed, k, run]) for k in (102, 103))
            self._open = (run, *streams) if stop < end else None
            runs.append((slice(max(start, first) - start, min(stop, end) - start), *streams))
        self.position = stop
        return runs


def sample_counts(lognorm_mean: np.ndarray, log_lib_mean: np.ndarray, log_lib_sd: np.ndarray,
                  lib_rng: np.random.Generator, streams: CountStreams, theta: np.ndarray | None = None,
                  rates: str = "fraction") -> np.ndarray:
    """Counts drawn around a decoder mean, returned as log1p(CP10k).

    Library L ~ logNormal(mean, sd), from ``lib_rng`` in cell order. ``rates="fraction"``:
    expression fractions p = expm1(mean) / sum(expm1(mean)) and rates p L (right when the mean
    is on the count scale, as the negative binomial decoder's); ``"log_mean"``: the rates whose
    expected log1p(CP10k) equals the mean (``LogMeanInverter``; right for decoders of
    log-normalized values). Counts ~ Poisson(rate), or negative binomial with inverse dispersion
    ``theta`` (Gamma-Poisson), from ``streams`` run by run (:class:`CountStreams`); calls for
    consecutive chunks of cells give the values of one call for all of them.
    """
    global _INVERTER
    lib = np.exp(log_lib_mean + log_lib_sd * lib_rng.standard_normal(len(lognorm_mean)))
    if rates not in ("fraction", "log_mean"):
        raise ValueError(f"rates must be 'fraction' or 'log_mean', got {rates!r}")
    if rates == "log_mean" and _INVERTER is None:
        _INVERTER = LogMeanInverter()

    def rates_of(rows: slice) -> np.ndarray:
        if rates == "log_mean":
            return _INVERTER.rates(lognorm_mean[rows], lib[rows])
        expr = np.expm1(np.asarray(lognorm_mean[rows], dtype=np.float64)).clip(min=0.0)
        total = expr.sum(1, keepdims=True)
        total[total <= 0] = 1.0
        return expr / total * lib[rows, None]

    out = np.empty(np.shape(lognorm_mean), dtype=np.float32)
    block = dense_block_rows(out.shape[1], COUNT_STREAM_ROWS, DRAW_BLOCK_VALUES)  # rows a thread draws at once

    def draw(run: tuple) -> None:
        rows, count_rng, gamma_rng = run
        for first in range(rows.start, rows.stop, block):
            part = slice(first, min(first + block, rows.stop))
            out[part] = draw_counts(rates_of(part), count_rng, theta, gamma_rng)

    runs = streams.take(len(out))
    workers = draw_workers(len(runs))
    if workers == 1:
        for run in runs:
            draw(run)
    else:  # numpy's draws and interp let go of the GIL; each run has its own streams
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(draw, runs))
    return out


def draw_counts(rate: np.ndarray, count_rng: np.random.Generator, theta: np.ndarray | None = None,
                gamma_rng: np.random.Generator | None = None) -> np.ndarray:
    """Counts ~ Poisson(rate), or negative binomial with per-gene inverse dispersion ``theta``
    (Gamma-Poisson; genes with theta = inf stay Poisson), returned as log1p(CP10k)."""
    if theta is not None:
        theta = np.asarray(theta, dtype=np.float64)
        finite = np.isfinite(theta)
        rate = np.array(rate, dtype=np.float64)
        shape = np.broadcast_to(theta[finite], rate[:, finite].shape)
        rate[:, finite] = gamma_rng.gamma(shape, rate[:, finite] / shape)
    counts = count_rng.poisson(rate).astype(np.float64)
    size = counts.sum(1, keepdims=True)
    size[size <= 0] = 1.0
    counts /= size  # in place, in the order of counts / size * TARGET_SUM: the same values, fewer temporaries
    counts *= TARGET_SUM
    return np.log1p(counts, out=counts).astype(np.float32)
