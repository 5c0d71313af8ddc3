"""Generation's combination calibration (pysave.calibration)."""
import numpy as np
import pytest
import scipy.sparse as sp

import pysave
from pysave.calibration import MIN_CALIBRATION_CELLS, Calibration, combination_offsets
from pysave.errors import PySaveError

SEEN = {"batch": "10x_5prime", "cell_type": "B"}


def log_normalized_mean(adata, rows) -> np.ndarray:
    X = adata.X[rows]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4).mean(0)


def test_offsets_are_each_combinations_mean_residual():
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])  # combination 2 has fewer than MIN_CALIBRATION_CELLS cells
    real, decoded = rng.random((9, 5)), rng.random((9, 5))
    out = combination_offsets(lambda a, b: real[a:b], lambda a, b: decoded[a:b].astype(np.float32), groups, 3, seed=0, batch=4)
    offsets = out["offset_scores"] @ out["offset_basis"]
    for g in (0, 1):
        np.testing.assert_allclose(offsets[g], (real - decoded)[groups == g].mean(0), atol=1e-6)
    assert MIN_CALIBRATION_CELLS > 2 and not offsets[2].any()
    assert out["offset_cells"].tolist() == [3, 4, 2]


def test_offsets_above_the_rank_are_kept_low_rank():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(12, 2)) @ rng.normal(size=(2, 30))  # 12 combinations, rank 2
    groups = np.repeat(np.arange(12), 4)
    real = truth[groups] + 1.0
    out = combination_offsets(lambda a, b: real[a:b], lambda a, b: np.ones((b - a, 30), np.float32), groups, 12, seed=0, rank=3)
    assert out["offset_scores"].shape == (12, 3) and out["offset_basis"].shape == (3, 30)
    np.testing.assert_allclose(out["offset_scores"] @ out["offset_basis"], truth, atol=1e-4)


def test_calibration_applies_to_seen_combinations_only():
    stats = {"codes": np.array([[0, 0], [0, 1], [1, 1]]), "offset_scores": np.eye(3, dtype=np.float32),
             "offset_basis": np.array([[1.0, -5.0], [2.0, 2.0], [3.0, 3.0]], np.float32), "offset_cells": np.array([5, 1, 9])}
    calibration = Calibration(stats)
    codes = np.array([[0, 0], [1, 1], [0, 1], [2, 0], [0, 0]])  # [0, 1] has 1 cell, [2, 0] is unseen (or masked)
    assert calibration.combinations(codes).tolist() == [0, 2, -1, -1, 0]
    x = np.ones((5, 2), np.float32)
    calibration.apply(x, codes)
    np.testing.assert_array_equal(x, [[2, 0], [4, 4], [1, 1], [1, 1], [2, 0]])  # clipped at 0


def test_calibrated_generation_lands_on_the_training_mean(trained):
    model, adata = trained["model"], trained["adata"]
    rows = np.flatnonzero((adata.obs["batch"] == SEEN["batch"]).to_numpy() & (adata.obs["cell_type"] == SEEN["cell_type"]).to_numpy())
    assert len(rows) >= MIN_CALIBRATION_CELLS
    real = log_normalized_mean(adata, rows)
    calibrated = model.generate(SEEN, n_cells=300, seed=3, output="mean")
    raw = model.generate(SEEN, n_cells=300, seed=3, output="mean", calibrate=False)
    np.testing.assert_array_equal(calibrated.obsm["X_save"], raw.obsm["X_save"])  # the flow's latents are the same
    error = np.linalg.norm(calibrated.X.mean(0) - real)
    assert error < 0.5 * np.linalg.norm(raw.X.mean(0) - real)
    assert calibrated.uns["pysave"]["calibrated"] and calibrated.uns["pysave"]["calibrated_cells"] == 300
    assert "calibrated" in calibrated.uns["pysave"]["output_description"]
    assert not raw.uns["pysave"]["calibrated"]
    # Sampled counts around the calibrated means, on the same scale.
    sampled = model.generate(SEEN, n_cells=300, seed=3)
    assert sampled.X.min() >= 0 and np.isfinite(sampled.X).all()


def test_unseen_and_masked_combinations_are_left_as_decoded(trained):
    model = trained["model"]
    masked = model.generate({"cell_type": "B"}, n_cells=20, seed=1)
    raw = model.generate({"cell_type": "B"}, n_cells=20, seed=1, calibrate=False)
    np.testing.assert_array_equal(masked.X, raw.X)
    assert masked.uns["pysave"]["calibrated"] and masked.uns["pysave"]["calibrated_cells"] == 0


def test_calibration_survives_save_and_load(trained):
    loaded = pysave.SAVE.load(trained["dir"], verbose=False, device="cpu")
    assert "offset_scores" in loaded.condition_latents
    a = loaded.generate(SEEN, n_cells=15, seed=2)
    b = trained["model"].generate(SEEN, n_cells=15, seed=2)
    np.testing.assert_array_equal(a.X, b.X)


def test_models_without_offsets_generate_uncalibrated_and_say_so(trained, capsys):
    model = pysave.SAVE.load(trained["dir"], verbose=True, device="cpu")
    for key in ("offset_scores", "offset_basis", "offset_cells"):  # as a model directory saved before calibration
        del model.condition_latents[key]
    out = model.generate(SEEN, n_cells=10, seed=2)
    assert "generating without calibration" in capsys.readouterr().err
    assert not out.uns["pysave"]["calibrated"] and "saved before calibration" in out.uns["pysave"]["calibration_skipped"]
    np.testing.assert_array_equal(out.X, trained["model"].generate(SEEN, n_cells=10, seed=2, calibrate=False).X)
    with pytest.raises(PySaveError, match="calibrate must be True or False"):
        model.generate(SEEN, n_cells=2, calibrate="yes")
