"""Combination calibration: each seen combination's decoded mean put back on its training cells' mean.

Asked for a combination of conditions it was trained on, the decoder reproduces that
combination's mean expression only roughly. Decoding the training cells' own encoder means put
pbmc_3tech's group centres 0.25 within-group standard deviations from the real ones (30 PCs), and
the generated cells inherit that error (benchmarks/README.md, "Combination calibration").

So at the end of training the model keeps, for each combination, the mean over its kept cells
(``shift.kept_rows``) of their log1p(CP10k) minus the decoder mean of their encoder means.
Generation adds that offset to the decoder mean (clipped at 0) before counts are drawn. Only the
combinations seen in training with at least ``MIN_CALIBRATION_CELLS`` cells have one; a combination
never seen, or one with a masked condition, is generated as the model decodes it.

The offsets place a combination's centre; the decoder also gives each combination about
two-thirds to three-quarters of its real within-combination spread. So each generation call then
draws a pilot of every seen combination it asks for (``SPREAD_PILOT_CELLS`` cells, a fixed seed,
the call's sampler settings) and widens the decoder means PC by PC around the pilot's mean
(:func:`spread_factors`), towards the variance of the combination's training cells. Pilots are
kept with the model: those of the default settings are drawn at the end of training (for up to
``SPREAD_TRAINED_PILOTS`` combinations) and every kept pilot is saved in the model directory.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import distinct_rows

# Offsets are kept as (combinations x rank) scores times a (rank x genes) basis: exact up to this
# many combinations, a truncated SVD above (a model of 2,000 combinations x 30,000 genes keeps 16 MB,
# not 240 MB).
CALIBRATION_RANK = 128
# A combination's offset is the mean of its cells' residuals; below this many cells it is mostly
# one cell's noise, so such combinations get none.
MIN_CALIBRATION_CELLS = 3
# Spread calibration (benchmarks/README.md, "Spread calibration in expression space"): each seen
# combination's decoder means are widened PC by PC, around the mean of a pilot draw of
# SPREAD_PILOT_CELLS cells, so that the pilot's sampled cells get the per-PC variance of the
# combination's training cells (kept with the model: up to 500 cells' positions in its 30
# expression PCs). Variances of fewer kept cells are too noisy to aim at; factors are capped, as
# a few PCs ask for far more where the decoder has almost no spread.
SPREAD_PILOT_CELLS = 256
SPREAD_PILOT_SEED = 12345  # fixed, so a combination's factors do not depend on the call's seed or chunks
SPREAD_MIN_CELLS = 10
SPREAD_MAX_FACTOR = 2.0
# train() draws the pilots of generation's default sampler settings for this many combinations (those
# with the most kept cells), and the model directory keeps them, so that a default call after
# training or loading draws none (a pilot costs about a second on one CPU thread, fast network).
# Capped, as a model of thousands of small combinations would otherwise sample more cells for its
# pilots than it trained on; the others get theirs at their first call.
SPREAD_TRAINED_PILOTS = 100


def combination_offsets(real, decoded, groups: np.ndarray, n_groups: int, seed: int, batch: int = 4096,
                        rank: int = CALIBRATION_RANK) -> dict:
    """The calibration a model keeps: ``offset_scores`` @ ``offset_basis`` is each combination's
    offset (in the order of ``condition_latent_means``' codes; zero below ``MIN_CALIBRATION_CELLS``
    cells) and ``offset_cells`` the number of cells it averages.

    ``groups`` holds the combination of each cell to average; ``real(start, stop)`` gives the
    log1p(CP10k) of cells start..stop and ``decoded(start, stop)`` their decoder means (dense,
    cells x genes), ``batch`` cells at a time."""
    # float32 sums, divided in place: one (combinations x genes) float32 matrix is the peak (240 MB
    # at 2,000 x 30,000). Each sum holds at most SHIFT_KEPT_CELLS (500) residuals of a few log units, so
    # float32 loses nothing that matters against the offsets' own sampling noise.
    sums, counts = None, np.bincount(groups, minlength=n_groups)
    for start in range(0, len(groups), batch):
        stop = min(start + batch, len(groups))
        residual = torch.from_numpy(np.asarray(real(start, stop), dtype=np.float32) - decoded(start, stop))
        if sums is None:
            sums = torch.zeros(n_groups, residual.shape[1], dtype=torch.float32)
        sums.index_add_(0, torch.from_numpy(groups[start:stop].astype(np.int64)), residual)
    offsets = sums.div_(torch.from_numpy(np.maximum(counts, 1).astype(np.float32))[:, None]).numpy()
    offsets[counts < MIN_CALIBRATION_CELLS] = 0.0
    if n_groups <= rank:
        scores, basis = np.eye(n_groups, dtype=np.float32), offsets
    else:
        from sklearn.utils.extmath import randomized_svd

        u, s, vt = randomized_svd(offsets, rank, random_state=seed)
        scores, basis = u * s, vt
    return {"offset_scores": scores.astype(np.float32), "offset_basis": basis.astype(np.float32),
            "offset_cells": counts.astype(np.int64)}


def missing_reason(stats: dict | None, likelihood: str) -> str | None:
    """Why a model's ``condition_latents`` (``stats``) hold no calibration, or None when they do."""
    if "offset_scores" in (stats or {}):
        return None
    if likelihood == "nb":
        return "the negative binomial decoder's mean is on the count scale, which calibration's offsets are not"
    return "this model directory was saved before calibration existed; retrain the model to calibrate"


def training_pc_variances(stats: dict, min_cells: int = SPREAD_MIN_CELLS) -> dict:
    """{combination (row of ``stats["codes"]``): per-PC variance of its kept training cells'
    expression-PC positions} for combinations with at least ``min_cells`` kept cells."""
    positions, groups = np.asarray(stats["cell_positions"], np.float64), np.asarray(stats["cell_groups"])
    # Per-combination sums by bincount, not a mask per combination (thousands of combinations x
    # up to 200,000 kept cells); centred on the overall mean first, so the one-pass variance keeps
    # its digits.
    positions = positions - positions.mean(0)
    counts = np.bincount(groups)
    sums = np.stack([np.bincount(groups, weights=positions[:, k], minlength=len(counts)) for k in range(positions.shape[1])], 1)
    squares = np.stack([np.bincount(groups, weights=positions[:, k] ** 2, minlength=len(counts))
                        for k in range(positions.shape[1])], 1)
    keep = np.flatnonzero(counts >= max(2, min_cells))
    variances = (squares[keep] - sums[keep] ** 2 / counts[keep, None]) / (counts[keep, None] - 1)
    return {int(j): np.maximum(v, 0.0) for j, v in zip(keep, variances)}


def spread_factors(means: np.ndarray, samples: np.ndarray, components: np.ndarray, training_variance: np.ndarray,
                   max_factor: float = SPREAD_MAX_FACTOR, min_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(centre's PC scores, per-PC factors) from a pilot draw of one combination: its decoder means
    and the cells sampled around them (log1p(CP10k), cells x genes), the centre being the means'
    mean. A factor f scales the decoder means' deviation from the centre along its PC so that the
    sampled cells' variance there becomes the
    training cells': f^2 = (training - count noise) / decoder-mean variance, the count noise being
    what sampling adds to the decoder means' variance; f is kept in [min_factor, max_factor]
    (``min_factor`` < 1 also narrows the PCs where the sampled cells are wider than the training
    cells)."""
    centre = means.mean(0)
    components = np.asarray(components, np.float64)
    mean_var = ((means - centre) @ components.T).var(0, ddof=1)
    sample_var = ((samples - samples.mean(0)) @ components.T).var(0, ddof=1)
    wanted = training_variance - np.maximum(sample_var - mean_var, 0.0)
    factors = np.sqrt(np.clip(wanted / np.maximum(mean_var, 1e-8), min_factor ** 2, max_factor ** 2))
    # Only the centre's PC scores enter the widening: 30 numbers a model directory can keep.
    return (centre @ components.T).astype(np.float32), factors.astype(np.float32)


class Calibration:
    """The offsets of a model's ``condition_latents`` (``combination_offsets``), applied to decoder
    means; and, once :meth:`set_spread` has been given a call's pilot factors, the spread."""

    def __init__(self, stats: dict):
        self.scores, self.basis = stats["offset_scores"], stats["offset_basis"]
        self.index = {tuple(int(v) for v in row): j for j, row in enumerate(stats["codes"])
                      if stats["offset_cells"][j] >= MIN_CALIBRATION_CELLS}
        self.spread, self.components = {}, None

    def set_spread(self, components: np.ndarray, spread: dict) -> None:
        """``spread``: {combination: (centre's PC scores, factors)} from :func:`spread_factors`,
        along ``components`` (PCs x genes)."""
        self.components, self.spread = np.asarray(components, np.float32), spread

    def combinations(self, codes: np.ndarray) -> np.ndarray:
        """Each row's combination with an offset, or -1."""
        distinct, inverse = distinct_rows(codes)
        found = np.array([self.index.get(tuple(int(v) for v in row), -1) for row in distinct], dtype=np.int64)
        return found[np.asarray(inverse).reshape(-1)]

    def apply(self, decoded: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Decoder means (cells x genes, log1p(CP10k)) plus their combination's offset, clipped at
        0, then widened by the spread factors where set, clipped again; in place."""
        combination = self.combinations(codes)
        for j in np.unique(combination[combination >= 0]):
            rows = combination == j
            shifted = np.maximum(decoded[rows] + self.scores[j] @ self.basis, 0.0)
            if int(j) in self.spread:  # widened from the clipped means, as the pilot measured them
                centre, factors = self.spread[int(j)]
                shifted += (((shifted @ self.components.T) - centre) * (factors - 1.0)) @ self.components
            decoded[rows] = shifted
        np.maximum(decoded, 0.0, out=decoded)
        return decoded
