"""Condition shifts: scGen's latent arithmetic in SAVE's latent, behind ``transfer(via="shift")``
and ``generate(shift_from=...)``.

At the end of training the model keeps each combination of conditions' mean latent, the training
cells' expression PCs and up to ``SHIFT_KEPT_CELLS`` cells per combination (``condition_latent_means``,
``expression_pcs``, ``kept_shift_cells``). ``latent_shifts`` turns them into a per-cell latent shift
from one value of a condition to another: local, by optimal transport between kept cells, or as a
weighted mean of the strata's mean shifts.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
from scipy.spatial.distance import cdist, pdist

from .data import dense_block_rows, distinct_rows
from .errors import PySaveError

# A stratum (one value of each unchanged condition) enters a shift only with this many cells on
# both sides: means of fewer cells are mostly noise.
MIN_SHIFT_CELLS = 3
# The width of latent_shifts' weights, in units of the median squared distance between strata. Kang,
# 7 types x 2 seeds held out: R^2 DEGs / all genes 0.855 / 0.885 with equal weights, 0.866 / 0.892
# at 1, 0.872 / 0.895 at 0.5, 0.874 / 0.895 at 0.25. Chosen there, then checked on muscat's Kang
# set (5 types x 2 seeds): 0.833 / 0.910 equal, 0.853 / 0.921 at 0.5 (benchmarks/README.md).
SHIFT_BANDWIDTH = 0.5
# latent_shifts measures how close a cell lies to each stratum in this many principal components of
# the training cells' log1p(CP10k), fitted on up to EXPRESSION_FIT_CELLS of them (by seed). The
# conditioned encoder's latent keeps less of what tells cell types apart: muscat's Kang set, 5
# types x 2 seeds held out, R^2 top-100 DEGs / all genes 0.881 / 0.936 weighing in expression
# against 0.867 / 0.927 in the latent (CD14+ monocytes 0.75 against 0.68); Kang, 7 types x 2 seeds,
# level (0.898 / 0.902 both; benchmarks/README.md).
EXPRESSION_PCS = 30
EXPRESSION_FIT_CELLS = 10_000
EXPRESSION_FIT_VALUES = 50_000_000  # cells x genes held for the fit (float32): 10,000 cells up to 5,000 genes

# transfer(via="shift") gives each cell the mean displacement of its SHIFT_NEIGHBOURS nearest training
# source cells of the other strata, in the expression PCs; each of those cells' displacement comes from
# optimal transport between its stratum's source and target cells in the latent. Cells take the
# response of the cells they resemble, not of their strata's averages: Kang, 7 types x 4 seeds held
# out, R^2 top-100 DEGs / all genes 0.906 / 0.906 against 0.900 / 0.903 for the kernel over stratum
# means; muscat's Kang set (5 types x 2 seeds, where k = 30 was chosen) 0.901 / 0.943 against 0.881 /
# 0.936 (benchmarks/README.md, try_shift_local.py). 0 uses the kernel over stratum means.
SHIFT_NEIGHBOURS = 30
# train() keeps up to this many cells of each combination of conditions (drawn by the seed) for it:
# their encoder means and expression PCs, 158 floats per cell. Matching only 100 or 50 cells per
# stratum side lost 0.007 and 0.012 on the DEGs (muscat's set, strata of 94-200 cells). At most
# SHIFT_KEPT_TOTAL cells in all (~130 MB), so models with thousands of combinations keep fewer of each.
SHIFT_KEPT_CELLS = 500
SHIFT_KEPT_TOTAL = 200_000


def condition_latent_means(mu: torch.Tensor, codes: np.ndarray, batch: int = 65_536) -> dict:
    """Mean encoder latent of each combination of conditions in the training data: ``codes``
    (combinations x keys), ``counts`` and ``means`` (combinations x latent_dim), kept with the
    model for ``transfer(via="shift")``. Sums are accumulated in float64, batch by batch."""
    combos, inverse, counts = distinct_rows(codes, return_counts=True)
    inverse = torch.from_numpy(np.asarray(inverse).reshape(-1).astype(np.int64))
    sums = torch.zeros(len(combos), mu.shape[1], dtype=torch.float64)
    for start in range(0, mu.shape[0], batch):
        sums.index_add_(0, inverse[start:start + batch], mu[start:start + batch].double())
    return {"codes": combos.astype(np.int64), "counts": counts.astype(np.int64),
            "means": (sums / torch.from_numpy(counts)[:, None]).float().numpy()}


def never_seen(codes: np.ndarray, stats: dict, mask_codes) -> list[tuple[np.ndarray, list[tuple[int, int, int]]]]:
    """The distinct fully given rows of ``codes`` whose combination no training cell had, each with
    the changes of one condition that lead to a combination the training data holds, as (column,
    code, strata): ``strata`` counts the combinations of the other conditions seen with both that
    code and the row's (``MIN_SHIFT_CELLS`` each), which the latent shift back to the row is learned
    from; changes with none are left out. Most strata first.
    Rows with a masked condition are not combinations and are left out."""
    counts = {tuple(int(v) for v in row): int(n) for row, n in zip(stats["codes"], stats["counts"])}
    seen = {k for k, n in counts.items() if n > 0}
    shiftable = {k for k, n in counts.items() if n >= MIN_SHIFT_CELLS}  # as latent_shifts' strata
    mask = np.asarray(mask_codes)
    # Per column: each code -> the combinations of the other conditions with enough cells of it.
    with_value = [{} for _ in mask]
    for k in shiftable:
        for j, by_code in enumerate(with_value):
            by_code.setdefault(k[j], set()).add(k[:j] + k[j + 1:])
    found = []
    for row in distinct_rows(codes)[0]:
        key = tuple(int(v) for v in row)
        if (row == mask).any() or key in seen:
            continue
        ways = []
        for j, by_code in enumerate(with_value):
            rest, target = key[:j] + key[j + 1:], by_code.get(key[j], set())
            ways += [(j, c, len(others & target)) for c, others in by_code.items() if rest in others and others & target]
        found.append((row, sorted(ways, key=lambda w: (-w[2], w[0], w[1]))))
    return found


def log_normalized_rows(source, scalers, start: int, stop: int) -> np.ndarray:
    """log1p(CP10k) of rows start..stop of a prepared source (its [0, 1] values times the scalers)."""
    x01, _ = source.read(start, stop)
    return x01.toarray() * scalers.values[source.scaler_index[start:stop]]


def expression_pcs(source, scalers, seed: int, n_components: int = EXPRESSION_PCS,
                   fit_cells: int = EXPRESSION_FIT_CELLS, batch: int = 4096) -> tuple[dict, np.ndarray | None]:
    """Principal components of the training cells' log1p(CP10k) (``pc_components``,
    ``pc_center``; fitted on up to ``fit_cells`` cells drawn by ``seed``, fewer above 5,000 genes) and each combination of
    conditions' mean position in them (``pc_means``, in ``condition_latent_means``' order), kept
    with the model so that ``latent_shifts`` can weigh strata by expression; and every cell's
    position in them (for ``kept_shift_cells``). ({}, None) for < 2 cells."""
    from sklearn.decomposition import PCA

    n = source.n_cells
    if n < 2:
        return {}, None
    # The fit holds its cells densely: at most ~200 MB of them, so fewer cells when there are many genes.
    n_genes = len(scalers.values[0])
    fit_cells = min(fit_cells, max(1_000, EXPRESSION_FIT_VALUES // max(1, n_genes)))
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, fit_cells), replace=False))
    sample = source.take(rows)
    X = log_normalized_rows(sample, scalers, 0, len(rows))
    pca = PCA(max(1, min(n_components, X.shape[0] - 1, X.shape[1])), random_state=seed).fit(X)
    stats = {"pc_components": pca.components_.astype(np.float32), "pc_center": pca.mean_.astype(np.float32)}
    positions = source_positions(stats, source, scalers, batch)
    stats["pc_means"] = condition_latent_means(torch.from_numpy(positions), source.codes)["means"]
    return stats, positions


def kept_rows(codes: np.ndarray, seed: int, per_combination: int = SHIFT_KEPT_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_combination`` rows of each combination of conditions (fewer when the
    combinations would hold more than ``SHIFT_KEPT_TOTAL`` in all), drawn by ``seed``, in row
    order; and each row's combination (the row of ``condition_latent_means``' ``codes``)."""
    _, group = distinct_rows(codes)
    group = np.asarray(group).reshape(-1)
    order = np.argsort(group, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(group))]
    per_combination = max(1, min(per_combination, SHIFT_KEPT_TOTAL // (len(bounds) - 1)))
    rng = np.random.default_rng([seed, 17])
    keep = np.sort(np.concatenate([rng.permutation(order[a:b])[:per_combination] for a, b in zip(bounds[:-1], bounds[1:])]))
    return keep, group[keep]


def kept_shift_cells(mu: torch.Tensor, positions: np.ndarray | None, codes: np.ndarray, seed: int,
                     per_combination: int = SHIFT_KEPT_CELLS) -> dict:
    """The training cells of ``kept_rows``, kept with the model for the local shifts of
    ``latent_shifts``: their encoder means (``cell_latents``), expression-PC positions
    (``cell_positions``) and combination (``cell_groups``). Empty without positions."""
    if positions is None:
        return {}
    keep, group = kept_rows(codes, seed, per_combination)
    return {"cell_latents": mu[torch.from_numpy(keep)].numpy().astype(np.float32),
            "cell_positions": np.asarray(positions[keep], dtype=np.float32), "cell_groups": group.astype(np.int64)}


def source_positions(stats: dict, source, scalers, batch: int) -> np.ndarray:
    """Every cell of a prepared source in the expression PCs, read ``batch`` rows at a time (fewer
    at many genes: ``data.dense_block_rows``)."""
    n = source.n_cells
    batch = dense_block_rows(len(stats["pc_center"]), batch)
    return np.concatenate([expression_positions(stats, log_normalized_rows(source, scalers, s, min(s + batch, n)))
                           for s in range(0, n, batch)] or [np.zeros((0, len(stats["pc_components"])), np.float32)])


def expression_positions(stats: dict, lognorm: np.ndarray) -> np.ndarray:
    """Cells' log1p(CP10k) (cells x the model's genes) in the training cells' expression PCs."""
    return ((np.asarray(lognorm, dtype=np.float64) - stats["pc_center"]) @ stats["pc_components"].T.astype(np.float64)).astype(np.float32)


def latent_shifts(stats: dict, latents: np.ndarray, source: np.ndarray, target: np.ndarray, changed: list[int],
                  min_cells: int = MIN_SHIFT_CELLS, bandwidth: float = SHIFT_BANDWIDTH, positions: np.ndarray | None = None,
                  neighbours: int = 0, transport: dict | None = None):
    """Per-cell latent shift from the cell's conditions ``source`` to ``target`` (cells x keys).

    For each distinct (source, target) pair of values of the ``changed`` columns, the strata (one
    value of each other column, as in the training data) with at least ``min_cells`` cells on both
    sides each give a shift: mean latent(target values, stratum) - mean latent(source values,
    stratum). A cell's shift is their weighted mean, with weights exp(-d_s / h): d_s is the squared
    distance from the cell to stratum s's source mean, less the smallest such distance, and h is
    ``bandwidth`` times the median squared distance between the strata's source means. Cells take
    most of their shift from the strata they resemble (a held-out monocyte type from the other
    monocytes); ``bandwidth=inf`` weighs the strata equally, as scGen does. The distances are
    measured between ``positions`` (cells x PCs, ``expression_positions``) and
    ``stats["pc_means"]`` when given (what the model does), else between the cells' ``latents``
    and the strata's mean latents.

    With ``neighbours`` > 0 and ``positions`` (and the kept cells of ``kept_shift_cells`` in
    ``stats``) the shift is local instead: in each stratum, the kept source and target cells are
    matched by exact optimal transport in the latent (POT, uniform weights, squared Euclidean
    cost), each source cell's displacement is its barycentric image minus itself, and a cell takes
    the mean displacement of its ``neighbours`` nearest kept source cells, all strata pooled, in
    the expression PCs. ``transport`` (a dict) keeps the solved displacements between calls, so
    that generation, which shifts chunk after chunk, solves each stratum's transport once.
    Returns (shifts, pairs): pairs lists each pair's strata count, or None for a pair no stratum
    covers."""
    places = stats["means"] if positions is None else stats["pc_means"]
    table = {tuple(c): (n, m, p, i) for i, (c, n, m, p) in
             enumerate(zip(stats["codes"].tolist(), stats["counts"].tolist(), stats["means"], places))}
    local = neighbours > 0 and positions is not None and "cell_latents" in stats
    shifts = np.zeros((len(source), stats["means"].shape[1]), dtype=np.float32)
    pairs = []
    key = np.concatenate([source[:, changed], target[:, changed]], axis=1)
    pair_rows, pair_of_row = distinct_rows(key)
    for p, pair in enumerate(pair_rows):
        src, tgt = pair[:len(changed)], pair[len(changed):]
        rows = pair_of_row == p
        if (src == tgt).all():
            pairs.append((src, tgt, 0))
            continue
        deltas, origins, strata = [], [], []
        for combo, (n, mean, place, row) in table.items():
            combo = np.asarray(combo)
            if n < min_cells or not (combo[changed] == src).all():
                continue
            partner = combo.copy()
            partner[changed] = tgt
            hit = table.get(tuple(partner.tolist()))
            if hit is not None and hit[0] >= min_cells:
                deltas.append(hit[1].astype(np.float64) - mean)
                origins.append(place.astype(np.float64))
                strata.append((row, hit[3]))
        pairs.append((src, tgt, len(deltas) if deltas else None))
        if deltas and local:
            shifts[rows] = _local_shifts(stats, strata, positions[rows], neighbours, transport)
        elif deltas:
            where = latents if positions is None else positions
            shifts[rows] = _stratum_weights(where[rows], np.stack(origins), bandwidth) @ np.stack(deltas)
    return shifts, pairs


def _local_shifts(stats: dict, strata: list, positions: np.ndarray, neighbours: int, transport: dict | None = None,
                  batch: int = 4096) -> np.ndarray:
    """``latent_shifts``' local shifts: ``strata`` lists (source row, target row) of the
    combinations in ``stats["codes"]``; each cell (``positions``, expression PCs) takes the mean
    optimal-transport displacement of its ``neighbours`` nearest kept source cells."""
    key = tuple(strata)
    solved = None if transport is None else transport.get(key)
    if solved is None:
        import ot

        kept = stats["cell_latents"].astype(np.float64)
        moves, places = [], []
        for src, tgt in strata:
            a, b = kept[stats["cell_groups"] == src], kept[stats["cell_groups"] == tgt]
            plan = ot.emd(ot.unif(len(a)), ot.unif(len(b)), ot.dist(a, b))
            moves.append(plan @ b / plan.sum(1, keepdims=True) - a)
            places.append(stats["cell_positions"][stats["cell_groups"] == src].astype(np.float64))
        solved = np.concatenate(moves), np.concatenate(places)
        if transport is not None:
            transport[key] = solved
    return _nearest_mean(*solved, positions, neighbours, batch)


def _nearest_mean(moves: np.ndarray, places: np.ndarray, positions: np.ndarray, neighbours: int, batch: int) -> np.ndarray:
    """The mean of ``moves`` over each position's ``neighbours`` nearest ``places`` (exact, float64).

    Distances up to a per-cell constant, |place|^2 - 2 position.place, are one matrix product per
    batch, and torch's top-k picks the nearest: ~8x faster than scipy's cdist and a full
    argpartition at 100,000 kept cells (benchmarks/bench_scale.py, part local_shifts), with the
    same neighbours."""
    k = min(int(neighbours), len(places))
    kept = torch.from_numpy(np.ascontiguousarray(places, dtype=np.float64))
    squares = (kept * kept).sum(1)
    moves = torch.from_numpy(np.ascontiguousarray(moves, dtype=np.float64))
    out = np.empty((len(positions), moves.shape[1]), dtype=np.float32)
    batch = max(1, min(batch, 20_000_000 // len(places)))  # at most ~160 MB of distances at a time
    for start in range(0, len(positions), batch):  # cells x kept cells distances, a batch at a time
        cells = torch.from_numpy(np.asarray(positions[start:start + batch], dtype=np.float64))
        d = torch.addmm(squares, cells, kept.T, alpha=-2.0)
        nearest = d.topk(k, dim=1, largest=False, sorted=False).indices
        out[start:start + batch] = moves[nearest].mean(1).numpy()
    return out


def check_shift_neighbours(neighbours) -> None:
    if not (isinstance(neighbours, numbers.Integral) and not isinstance(neighbours, bool) and neighbours >= 0):
        raise PySaveError(f"shift_neighbours must be a whole number >= 0 (default {SHIFT_NEIGHBOURS}; 0 weighs the strata's "
                          f"mean shifts with the kernel of shift_bandwidth instead), got {neighbours!r}.")


def check_shift_bandwidth(bandwidth) -> None:
    if not (isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, bool) and bandwidth > 0):  # NaN fails too
        raise PySaveError(f"shift_bandwidth must be a positive number (default {SHIFT_BANDWIDTH}; inf weighs the "
                          f"strata equally), got {bandwidth!r}.")


def _stratum_weights(latents: np.ndarray, origins: np.ndarray, bandwidth: float) -> np.ndarray:
    """cells x strata weights (rows sum to 1) of ``latent_shifts``: a Gaussian kernel on the squared
    distance from each cell to each stratum's source mean, its width set by the strata's spread."""
    spread = np.median(pdist(origins, "sqeuclidean")) if len(origins) > 1 else 0.0
    if not np.isfinite(bandwidth) or spread <= 0:  # one stratum, or equal weights asked for
        return np.full((len(latents), len(origins)), 1.0 / len(origins))
    d = cdist(latents.astype(np.float64), origins, "sqeuclidean")
    w = np.exp(-(d - d.min(1, keepdims=True)) / (bandwidth * spread))
    return w / w.sum(1, keepdims=True)
