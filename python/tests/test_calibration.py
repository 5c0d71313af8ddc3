"""Generation's combination calibration (pysave.calibration)."""
import numpy as np
import pytest
import scipy.sparse as sp

import pysave
from pysave.calibration import (MIN_CALIBRATION_CELLS, SPREAD_MAX_FACTOR, SPREAD_MIN_CELLS, SPREAD_PILOT_CELLS, Calibration,
                                combination_offsets, spread_factors, training_pc_variances)
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


def test_spread_factors_give_the_sampled_cells_the_training_variance():
    rng = np.random.default_rng(0)
    components = np.eye(3, dtype=np.float32)[:2]  # 2 PCs over 3 genes
    means = rng.normal(size=(4000, 3)) * [0.5, 2.0, 1.0] + 3.0  # decoder means: sd 0.5 and 2 on the two PCs
    samples = means + rng.normal(size=means.shape) * 0.3  # count noise, variance 0.09 on every PC
    centre, factors = spread_factors(means, samples, components, training_variance=np.array([1.0 + 0.09, 0.5]))
    np.testing.assert_allclose(centre, means.mean(0)[:2], atol=1e-5)  # the means' mean, as PC scores
    # PC 1 widened to variance 1 before the noise (factor 2); PC 2 already wider than asked: left at 1.
    np.testing.assert_allclose(factors, [2.0, 1.0], rtol=0.05)
    _, capped = spread_factors(means, samples, components, np.array([100.0, 0.5]))
    assert capped[0] == np.float32(SPREAD_MAX_FACTOR)
    # With min_factor below 1, a PC wider than the training cells' is narrowed: 0.75^2 x 4 + 0.09.
    _, narrowed = spread_factors(means, samples, components, np.array([1.09, 0.5625 * 4 + 0.09]), min_factor=0.5)
    np.testing.assert_allclose(narrowed, [2.0, 0.75], rtol=0.05)
    _, floored = spread_factors(means, samples, components, np.array([1.09, 0.01]), min_factor=0.5)
    assert floored[1] == np.float32(0.5)


def test_training_pc_variances_are_each_combinations_variance():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 5, 300)
    positions = rng.normal(size=(300, 4)) * (1 + groups[:, None]) + 50.0  # far from 0: the one-pass sums' trap
    groups[groups == 4] = 3
    groups[:5] = 4  # combination 4: 5 kept cells, below SPREAD_MIN_CELLS
    got = training_pc_variances({"cell_positions": positions.astype(np.float32), "cell_groups": groups})
    assert sorted(got) == [0, 1, 2, 3]
    for j, v in got.items():
        np.testing.assert_allclose(v, positions.astype(np.float32)[groups == j].astype(np.float64).var(0, ddof=1), rtol=1e-9)


def test_spread_widens_each_combination_along_its_pcs_only():
    stats = {"codes": np.array([[0, 0], [1, 1]]), "offset_scores": np.eye(2, dtype=np.float32),
             "offset_basis": np.zeros((2, 3), np.float32), "offset_cells": np.array([5, 9])}
    calibration = Calibration(stats)
    components = np.array([[1.0, 0.0, 0.0]], np.float32)
    calibration.set_spread(components, {0: (np.array([2.0], np.float32), np.array([1.5], np.float32))})
    x = np.array([[3.0, 3.0, 3.0], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0]], np.float32)
    calibration.apply(x, np.array([[0, 0], [0, 0], [1, 1]]))
    # Combination 0: the first gene's deviation from the centre 1.5x, the others untouched;
    # combination 1 has no factors. Clipped at 0 after widening.
    np.testing.assert_allclose(x, [[3.5, 3.0, 3.0], [0.5, 1.0, 1.0], [3.0, 3.0, 3.0]])


def _pc_variance(model, X):
    components = model.condition_latents["pc_components"]
    return ((X - X.mean(0)) @ components.T).var(0, ddof=1).sum()


def test_generation_calibrates_the_spread_of_seen_combinations(trained):
    model = trained["model"]
    stats = model.condition_latents
    codes = np.array([[model._code_of(k, v) for k, v in SEEN.items()]])
    j = int(Calibration(stats).combinations(codes)[0])
    assert j in training_pc_variances(stats) and (stats["cell_groups"] == j).sum() >= SPREAD_MIN_CELLS
    out = model.generate(SEEN, n_cells=300, seed=3, output="mean")
    info = out.uns["pysave"]
    assert info["spread_calibrated_cells"] == 300 and info["spread_pilot_cells"] == SPREAD_PILOT_CELLS
    assert info["spread_max_factor"] == SPREAD_MAX_FACTOR and info["spread_min_cells"] == SPREAD_MIN_CELLS
    # The same latents, decoded without the spread (a model directory without the kept cells'
    # positions) are narrower, around the same centre.
    older = pysave.SAVE.load(trained["dir"], verbose=False, device="cpu")
    del older.condition_latents["cell_positions"]
    narrow = older.generate(SEEN, n_cells=300, seed=3, output="mean")
    assert narrow.uns["pysave"]["calibrated"] and narrow.uns["pysave"]["spread_calibrated_cells"] == 0
    assert "older pysave" in narrow.uns["pysave"]["spread_skipped"]
    assert "widened along the model's expression PCs" in info["output_description"]
    assert "widened" not in narrow.uns["pysave"]["output_description"]
    np.testing.assert_array_equal(out.obsm["X_save"], narrow.obsm["X_save"])
    assert _pc_variance(model, out.X) > 1.05 * _pc_variance(model, narrow.X)
    spread = np.linalg.norm(out.X - out.X.mean(0), axis=1).mean()
    assert np.linalg.norm(out.X.mean(0) - narrow.X.mean(0)) < 0.25 * spread
    # Without calibration, neither the offsets nor the spread.
    raw = model.generate(SEEN, n_cells=300, seed=3, output="mean", calibrate=False)
    assert "spread_calibrated_cells" not in raw.uns["pysave"]


def test_spread_does_not_depend_on_the_rest_of_the_call(trained):
    """A combination's factors come from its own pilot (fixed seed): the cells of a combination do
    not change with the other combinations asked for, the chunk size or the output kind's seed."""
    model = trained["model"]
    other = {"batch": "10x_3prime_v2" if SEEN["batch"] != "10x_3prime_v2" else "10x_5prime", "cell_type": "T_CD4"}
    alone = model.generate_like({k: [v] * 20 for k, v in SEEN.items()}, seed=4)
    both = model.generate_like({k: [SEEN[k]] * 20 + [other[k]] * 20 for k in SEEN}, seed=4, batch_size=7)
    assert both.uns["pysave"]["spread_calibrated_cells"] > 20  # the other combination is widened too
    np.testing.assert_array_equal(alone.X, both.X[:20])


def _counting_sample_latents(monkeypatch) -> list:
    """Patch pysave.model.sample_latents to record the number of rows of each call."""
    import pysave.model as model_module

    original, calls = model_module.sample_latents, []

    def counted(field, codes, *args, **kwargs):
        calls.append(len(codes))
        return original(field, codes, *args, **kwargs)

    monkeypatch.setattr(model_module, "sample_latents", counted)
    return calls


def test_spread_pilots_are_drawn_once_per_settings(trained, monkeypatch):
    """Training drew the pilots of the default settings and the model directory keeps them; a
    call at other settings draws its own once, and a second call at the same settings none."""
    model = pysave.SAVE.load(trained["dir"], verbose=False, device="cpu")
    calls = _counting_sample_latents(monkeypatch)
    first = model.generate(SEEN, n_cells=5, seed=1, output="mean")
    assert calls == [5]  # no pilot: kept from training
    model.generate(SEEN, n_cells=5, seed=1, guidance=2.0)
    assert calls == [5, SPREAD_PILOT_CELLS, 5]
    again = model.generate(SEEN, n_cells=5, seed=1, guidance=2.0, output="mean")
    assert calls == [5, SPREAD_PILOT_CELLS, 5, 5]
    with pytest.raises(PySaveError, match="torch_compile"):  # refused before any pilot is drawn
        model.generate(SEEN, n_cells=5, seed=1, n_steps=3, torch_compile="yes")
    assert calls == [5, SPREAD_PILOT_CELLS, 5, 5]
    # Drawn now (no pilot kept), the default settings' pilots give the same cells as the kept ones.
    model._spread_pilots.clear()
    np.testing.assert_array_equal(first.X, model.generate(SEEN, n_cells=5, seed=1, output="mean").X)
    assert calls[-2:] == [SPREAD_PILOT_CELLS, 5]
    assert again.uns["pysave"]["spread_calibrated_cells"] == 5


def test_training_draws_the_default_pilots_and_the_model_directory_keeps_them(trained, tmp_path, monkeypatch):
    from pysave.calibration import SPREAD_TRAINED_PILOTS
    from pysave.model import DEFAULT_GUIDANCE, DEFAULT_SOLVER, DEFAULT_STEPS

    model = pysave.SAVE.load(trained["dir"], verbose=False, device="cpu")  # saved right after training
    stats = model.condition_latents
    # The default settings' pilots of every combination the spread applies to (fewer than
    # SPREAD_TRAINED_PILOTS here), and only those.
    widened = {j for j in training_pc_variances(stats) if stats["offset_cells"][j] >= MIN_CALIBRATION_CELLS}
    assert 0 < len(widened) < SPREAD_TRAINED_PILOTS
    assert set(model._spread_pilots) == {(j, DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_SOLVER, "32") for j in widened}
    assert model.training_summary["spread_pilots"] == len(widened) and model.training_summary["spread_pilot_seconds"] > 0
    # Saved and loaded with the pilots drawn since (here guidance 2.5): the same keys and numbers.
    model.generate(SEEN, n_cells=3, seed=0, guidance=2.5)
    model.save(str(tmp_path / "m"))
    loaded = pysave.SAVE.load(str(tmp_path / "m"), verbose=False, device="cpu")
    assert loaded._spread_pilots.keys() == model._spread_pilots.keys() and len(model._spread_pilots) == len(widened) + 1
    for key, (centre, factors) in model._spread_pilots.items():
        np.testing.assert_array_equal(loaded._spread_pilots[key][0], centre)
        np.testing.assert_array_equal(loaded._spread_pilots[key][1], factors)
    calls = _counting_sample_latents(monkeypatch)
    np.testing.assert_array_equal(loaded.generate(SEEN, n_cells=4, seed=5, guidance=2.5).X,
                                  model.generate(SEEN, n_cells=4, seed=5, guidance=2.5).X)
    assert calls == [4, 4]


def test_training_draws_pilots_for_the_largest_combinations_only(trained, monkeypatch):
    import pysave.model as model_module

    stats = trained["model"].condition_latents
    model = pysave.SAVE.load(trained["dir"], verbose=False, device="cpu")
    model._spread_pilots = {}
    monkeypatch.setattr(model_module, "SPREAD_TRAINED_PILOTS", 1)
    assert model._train_spread_pilots() == 1
    kept = np.bincount(stats["cell_groups"], minlength=len(stats["codes"]))
    (key,) = model._spread_pilots
    assert kept[key[0]] == max(kept[j] for j in training_pc_variances(stats) if stats["offset_cells"][j] >= MIN_CALIBRATION_CELLS)


def test_a_model_directory_whose_pilots_do_not_match_is_refused(trained, tmp_path):
    import json

    from pysave.errors import ModelDirectoryError

    path = trained["model"].save(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["spread_pilots"].append(dict(config["spread_pilots"][0], guidance=9.0))
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirectoryError, match="spread pilots"):
        pysave.SAVE.load(path, verbose=False, device="cpu")


def test_spread_is_skipped_with_shift_from(trained):
    model = trained["model"]
    calibration = Calibration(model.condition_latents)
    codes = np.array([[model._code_of(k, v) for k, v in SEEN.items()]] * 3)
    info = model._spread_plan(calibration, codes, 1.5, 2, "euler", "32", shift={"source": codes})
    assert info == {"spread_calibrated_cells": 0, "spread_skipped": "shift_from places the cells by another combination's draw"}
    assert not calibration.spread
