import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import pysave
from pysave import metrics as M
from pysave.cli import GENERATION_SHOWN, main
from pysave.errors import PySaveError, PySaveWarning


def test_wasserstein_and_mmd_basics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    assert M.wasserstein(x, x) == pytest.approx(0, abs=1e-9)
    assert M.mmd_rbf(x, x) == pytest.approx(0, abs=1e-9)
    shifted = x + np.array([5.0, 0, 0])
    assert M.wasserstein(x, shifted, 1) == pytest.approx(5.0, rel=1e-6)  # a pure shift moves every point by 5
    assert M.wasserstein(x, shifted, 2) == pytest.approx(5.0, rel=1e-6)
    near, far = M.mmd_rbf(x, x + 0.5), M.mmd_rbf(x, shifted)
    assert 0 < near < far


def test_mmd_matches_brute_force():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 2)), rng.normal(1, 1, size=(20, 2))
    k = lambda a, b: sum(np.exp(-np.sum((a - b) ** 2) / (2 * s * s)) for s in M.SIGMAS)  # noqa: E731
    brute = (np.mean([[k(a, b) for b in x] for a in x]) + np.mean([[k(a, b) for b in y] for a in y])
             - 2 * np.mean([[k(a, b) for b in y] for a in x]))
    assert M.mmd_rbf(x, y) == pytest.approx(brute, rel=1e-9)


def test_log_normalized_layers_are_not_normalized_twice():
    """A layer that already holds log-normalized values (pysave's "save_corrected", a Seurat
    "data" slot) is scored as it is; a counts layer is log-normalized like X."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(40, 30)).astype(np.float32)
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    a = ad.AnnData(counts.copy(), layers={"counts": counts.copy(), "save_corrected": lognorm})
    np.testing.assert_array_equal(M.log_normalized(a, "save_corrected"), lognorm)
    np.testing.assert_allclose(M.log_normalized(a, "counts"), lognorm, rtol=1e-5)
    np.testing.assert_allclose(M.log_normalized(a), lognorm, rtol=1e-5)
    direct = M.unintegrated_pca(ad.AnnData(lognorm), n_pcs=5)
    np.testing.assert_allclose(np.abs(M.unintegrated_pca(a, n_pcs=5, layer="save_corrected")), np.abs(direct), rtol=1e-4, atol=1e-4)


def test_pca_does_not_depend_on_memory_layout():
    """The same values held column-major (an R matrix through reticulate) or sparse give the same
    PCA to the last bit: scIB's kBET flips on last-bit differences, so two copies of one layer
    scored differently on CI before the layout was fixed."""
    import scipy.sparse as sp

    from pysave.datasets import pbmc_3tech

    counts = pbmc_3tech().X
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    counts = counts.astype(np.float64)  # real data: on small random matrices the two orders happened to agree
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    for values in (counts, lognorm):
        rows = M.unintegrated_pca(ad.AnnData(np.ascontiguousarray(values)))
        np.testing.assert_array_equal(M.unintegrated_pca(ad.AnnData(np.asfortranarray(values))), rows)
        np.testing.assert_array_equal(M.unintegrated_pca(ad.AnnData(sp.csc_matrix(values))), rows)


def test_mean_agreement():
    a = np.random.default_rng(0).random((50, 30))
    out = M.mean_agreement(a, a)
    assert out["pearson_r"] == pytest.approx(1) and out["r2"] == pytest.approx(1) and out["r2_score"] == pytest.approx(1)
    flipped = M.mean_agreement(a, a[:, ::-1])
    assert flipped["r2_score"] < 0.5


def _split(pbmc_full):
    rng = np.random.default_rng(0)
    order = rng.permutation(pbmc_full.n_obs)
    return pbmc_full[np.sort(order[:600])].copy(), pbmc_full[np.sort(order[600:])].copy()


def test_generation_fidelity_scores_real_near_floor_and_noise_far(pbmc_full):
    test, train = _split(pbmc_full)
    real_vs_real = M.generation_fidelity(test, train, "cell_type", floor=train, n_hvg=500)
    table = real_vs_real["per_group"]
    # Scoring the floor cells as if generated reproduces the floor exactly.
    np.testing.assert_allclose(table["W1"], table["floor_W1"])
    assert real_vs_real["protocol"]["hvg_flavor"] == "seurat_v3" and real_vs_real["protocol"]["n_pcs"] == 30
    # Shuffled labels: every group is scored against a mix of cell types -> clearly worse.
    scrambled = train.copy()
    scrambled.obs["cell_type"] = scrambled.obs["cell_type"].to_numpy()[np.random.default_rng(1).permutation(train.n_obs)]
    worse = M.generation_fidelity(test, scrambled, "cell_type", n_hvg=500)
    assert worse["mean"]["W1"] > 1.2 * real_vs_real["mean"]["W1"]
    assert worse["mean"]["mean_r2"] < real_vs_real["mean"]["mean_r2"]


def test_size_matched_floor_draws_the_generated_size(pbmc_full):
    """floor_sized_*: the floor cells drawn at the generated set's size. At the floor's own size
    the draw is all of them (W1 as the floor's); a generated set a quarter of the size gets a
    floor of that size, further from the real cells by W1 than the full floor, as W1 falls with
    the number of cells."""
    test, train = _split(pbmc_full)
    same = M.generation_fidelity(test, train, "cell_type", floor=train, n_hvg=500)["per_group"]
    np.testing.assert_allclose(same["floor_sized_W1"], same["floor_W1"])
    quarter = np.concatenate([rows[: max(2, len(rows) // 4)] for rows in
                              (np.flatnonzero((train.obs["cell_type"] == t).to_numpy()) for t in train.obs["cell_type"].unique())])
    small = M.generation_fidelity(test, train[np.sort(quarter)].copy(), "cell_type", floor=train, n_hvg=500)
    table = small["per_group"]
    assert (table["floor_sized_W1"] > table["floor_W1"]).mean() > 0.8
    assert small["mean"]["floor_sized_W1"] > small["mean"]["floor_W1"] and "floor_sized" in small["protocol"]
    rng = np.random.default_rng(0)
    assert len(set(M.floor_cells_like(np.arange(10), 10, rng))) == 10  # enough floor cells: no cell twice
    assert len(M.floor_cells_like(np.arange(3), 7, rng)) == 7  # fewer: drawn with replacement


def test_gaussian_baseline_is_fitted_to_each_groups_floor_cells(pbmc_full):
    """gaussian_*: a Gaussian of each group's floor cells in the PC space, drawn at the generated
    size. It keeps the floor cells' spread, lands near the floor on real data, moves away when the
    floor's groups are wrong, and each group's draws come from its own stream."""
    test, train = _split(pbmc_full)
    result = M.generation_fidelity(test, train, "cell_type", floor=train, n_hvg=500)
    table = result["per_group"]
    assert {"gaussian_W1", "gaussian_W2", "gaussian_MMD", "gaussian_spread"} <= set(table.columns) and "gaussian" in result["protocol"]
    assert table["gaussian_W1"].notna().all()
    big = table[table["n_floor"] >= 50]
    assert len(big) >= 3
    np.testing.assert_allclose(big["gaussian_spread"], big["floor_sized_spread"], rtol=0.25)  # the floor's covariance
    assert (table["gaussian_W1"] < 1.3 * table["floor_W1"]).all()
    # A floor with its groups scrambled: each Gaussian mixes cell types, far from the real group.
    scrambled = train.copy()
    scrambled.obs["cell_type"] = scrambled.obs["cell_type"].to_numpy()[np.random.default_rng(1).permutation(train.n_obs)]
    wrong = M.generation_fidelity(test, train, "cell_type", floor=scrambled, n_hvg=500)
    assert wrong["mean"]["gaussian_W1"] > 1.2 * result["mean"]["gaussian_W1"]
    # Seeded per group: a group's numbers do not depend on which other groups were generated.
    kept = train.obs["cell_type"] != table.index[0]
    fewer = M.generation_fidelity(test, train[kept.to_numpy()].copy(), "cell_type", floor=train, n_hvg=500)["per_group"]
    pd.testing.assert_series_equal(fewer["gaussian_MMD"], table["gaussian_MMD"].drop(table.index[0]))
    # The draw itself: the points' mean and covariance; fewer points than dimensions still draw.
    z = np.random.default_rng(2).normal(size=(200, 3)) @ np.array([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.1]]) + 5
    drawn = M.gaussian_like(z, 100_000, np.random.default_rng(3))
    np.testing.assert_allclose(drawn.mean(0), z.mean(0), atol=0.02)
    np.testing.assert_allclose(np.cov(drawn.T), np.cov(z.T), atol=0.03)
    assert M.gaussian_like(z[:2], 5, np.random.default_rng(0)).shape == (5, 3)


def test_spread_shows_under_dispersed_output(pbmc_full):
    """Cells pulled halfway to their group's mean (in log1p(CP10k), where the PC projection is
    linear) have a quarter of the real spread; the real cells scored as generated have all of it.
    W1 alone would call the shrunk set closer to the held-out cells than the real one."""
    test, train = _split(pbmc_full)
    lognorm = M.log_normalized(train)
    shrunk = lognorm.copy()
    for group in train.obs["cell_type"].unique():
        rows = (train.obs["cell_type"] == group).to_numpy()
        shrunk[rows] = 0.5 * lognorm[rows] + 0.5 * lognorm[rows].mean(0)
    narrow = ad.AnnData(shrunk, obs=train.obs.copy(), var=train.var.copy())
    # all genes in the space (n_hvg above the gene count), so nothing is renormalized
    self_score = M.generation_fidelity(train, train, "cell_type")["per_group"]
    big = (self_score["n_real"] >= M.MIN_SPREAD_CELLS).to_numpy()
    assert big.sum() >= 3 and (~big).sum() >= 1  # both kinds of group are in the data
    np.testing.assert_allclose(self_score["spread"][big], 1.0, rtol=1e-9)
    assert self_score["spread"][~big].isna().all()  # too few cells for a variance in 30 dimensions
    scored = M.generation_fidelity(train, narrow, "cell_type")
    np.testing.assert_allclose(scored["per_group"]["spread"][big], 0.25, rtol=1e-6)
    assert scored["mean"]["spread"] == pytest.approx(0.25, rel=1e-6)  # the groups without one are left out of the mean
    real = M.generation_fidelity(test, train, "cell_type", floor=train, n_hvg=500)
    assert "floor_spread" in real["per_group"].columns and "spread" in real["mean"]
    assert abs(np.log(real["mean"]["spread"])) < abs(np.log(0.25))
    assert np.isnan(M.spread_ratio(np.zeros((12, 2)), np.ones((12, 2))))  # real cells all alike: no ratio


def test_log_normalized_output_over_more_genes_scores_like_its_counts(pbmc_full):
    """pysave writes log1p(CP10k) over all of a model's genes, while the real cells are normalized
    over their HVGs: the same cells given either way must score the same (taken as they were,
    they sat far above the floor), and a set over fewer genes is compared on the shared ones."""
    import scipy.sparse as sp

    test, train = _split(pbmc_full)
    lognorm = train.copy()
    lognorm.X = sp.csr_matrix(M.log_normalized(train).astype(np.float32))
    as_counts = M.generation_fidelity(test, train, "cell_type", floor=train, n_hvg=500)
    as_lognorm = M.generation_fidelity(test, lognorm, "cell_type", floor=train, n_hvg=500)
    for metric in ("W1", "MMD", "mean_r2", "spread"):
        np.testing.assert_allclose(as_lognorm["per_group"][metric], as_counts["per_group"][metric], rtol=1e-4)
    np.testing.assert_allclose(as_lognorm["per_group"]["W1"], as_lognorm["per_group"]["floor_W1"], rtol=1e-4)
    assert as_lognorm["protocol"]["n_genes_shared"] == pbmc_full.n_vars
    with pytest.warns(PySaveWarning, match="scoring on the 1,000 genes all sets share") as caught:
        fewer = M.generation_fidelity(test, lognorm[:, :1000], "cell_type", floor=train, n_hvg=500)
    assert os.path.samefile(caught[0].filename, __file__)  # the caller's line, not pysave's
    assert fewer["protocol"]["n_genes_shared"] == 1000 and fewer["protocol"]["n_genes_real"] == pbmc_full.n_vars
    np.testing.assert_allclose(fewer["per_group"]["W1"], fewer["per_group"]["floor_W1"], rtol=1e-4)
    assert as_lognorm["protocol"]["generated_renormalized"] and not as_counts["protocol"]["generated_renormalized"]
    # Decoder means are a mean of logs: renormalizing them is approximate, and the warning says so.
    means = lognorm.copy()
    means.uns["pysave"] = {"output": "mean"}
    with pytest.warns(PySaveWarning, match=r"decoder means \(output='mean'\) over 1,767 genes, renormalized over the 500") as caught:
        pysave.evaluate(test, means, groups=["cell_type"], n_hvg=500, umap=False)  # by way of pysave.evaluate
    assert os.path.samefile(caught[0].filename, __file__)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every gene compared: nothing renormalized, nothing to warn of
        kept = M.generation_fidelity(test, means, "cell_type")
    assert not kept["protocol"]["generated_renormalized"]
    renamed = lognorm.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    with pytest.raises(PySaveError, match="share 0 gene names"):
        M.generation_fidelity(test, renamed, "cell_type")


def test_generation_fidelity_errors(pbmc_full):
    test, train = _split(pbmc_full)
    with pytest.raises(PySaveError, match="are not in the real cells. obs"):
        M.generation_fidelity(test, train, "tissue")
    lognorm = test.copy()
    lognorm.X = lognorm.X.copy()
    lognorm.X.data = np.log1p(lognorm.X.data * 0.3)
    with pytest.raises(PySaveError, match="raw counts"):
        M.generation_fidelity(lognorm, train, "cell_type", n_hvg=500)  # HVG selection needs counts


def test_perturbation_agreement(pbmc_full):
    b = pbmc_full[pbmc_full.obs["cell_type"] == "B"]
    mono = pbmc_full[pbmc_full.obs["cell_type"] == "Mono_CD14"]
    half = b.n_obs // 2
    out = M.perturbation_agreement(mono, b[:half], b[half:], n_degs=50)
    assert out["all_genes"]["r2"] > 0.9 and out["top50_degs"]["r2"] > out["control_baseline_top50"]["r2"]
    assert len(out["degs"]) == 50


def test_evaluate_command(trained, tmp_path, pbmc_full):
    model = trained["model"]
    held = pbmc_full[~pbmc_full.obs_names.isin(trained["adata"].obs_names)][:, model.genes].copy()
    held.write_h5ad(tmp_path / "real.h5ad")
    model.generate_like(held.obs[["batch", "cell_type"]], seed=0).write_h5ad(tmp_path / "gen.h5ad")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "real.h5ad"), str(tmp_path / "gen.h5ad"), "--group", "cell_type",
                                       "--floor", trained["data"], "--out", str(tmp_path / "eval"), "--n-hvg", "200"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "eval" / "metrics.tsv", sep="\t", index_col=0)
    assert {"W1", "W2", "MMD", "mean_r2", "floor_W1", "gaussian_W1"} <= set(table.columns)
    # The terminal gets the columns to read first, each metric beside its floor and the Gaussian; the file has them all.
    header = next(line for line in result.output.splitlines() if "n_real" in line).split()
    assert header == [c for c in GENERATION_SHOWN if c in table.columns] and "W2" not in header
    assert "gaussian_MMD=" in result.output and "mean_r2_score" not in result.output and "every column" in result.output
    assert (tmp_path / "eval" / "umap.png").exists() and (tmp_path / "eval" / "metrics.png").exists()
    import json

    summary = json.load(open(tmp_path / "eval" / "summary.json"))
    assert summary["protocol"]["name"] == "generation_fidelity" and summary["scored_output"] == "sample"
    assert summary["task"] == "generation" and summary["protocol"]["seed"] == 0
    # The Python API gives the same table, and writes nothing without an output folder.
    import pysave

    real, gen, floor = (ad.read_h5ad(p) for p in (tmp_path / "real.h5ad", tmp_path / "gen.h5ad", trained["data"]))
    api_table, api_summary, files = pysave.evaluate(real, gen, groups=["cell_type"], floor=floor, n_hvg=200)
    assert files == [] and api_summary["mean"] == pytest.approx(summary["mean"])
    pd.testing.assert_frame_equal(api_table.reset_index(drop=True), table.reset_index(drop=True), check_dtype=False, atol=1e-6)
    with pytest.raises(pysave.PySaveError, match="needs groups"):
        pysave.evaluate(real, gen)
    with pytest.raises(pysave.PySaveError, match="already exists"):
        pysave.evaluate(real, gen, groups=["cell_type"], out=str(tmp_path / "eval"))
