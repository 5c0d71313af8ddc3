"""Sampled vs mean generated output (issue 4): library-size statistics, count sampling, provenance."""
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import pysave
import pysave.shift
from pysave import data as D
from pysave.cli import main
from pysave.errors import PySaveError
from pysave.metrics import torch_threads_kept
from support import TINY, TINY_TRAIN


def test_library_statistics_per_batch_and_combination():
    rng = np.random.default_rng(0)
    codes = np.array([[0, 0]] * 30 + [[0, 1]] * 3 + [[1, 0]] * 20, dtype=np.int64)
    library = np.exp(np.r_[rng.normal(6, 0.5, 30), rng.normal(9, 0.1, 3), rng.normal(8, 0.3, 20)])
    stats = D.library_statistics(library, codes, codes[:, 0], n_scaler_rows=3)
    log_lib = np.log(library)
    assert stats["by_scaler"][0][:2] == pytest.approx([log_lib[:33].mean(), log_lib[:33].std(ddof=1)])
    assert stats["by_scaler"][1][:2] == pytest.approx([log_lib[33:].mean(), log_lib[33:].std(ddof=1)])
    assert stats["by_scaler"][2][:2] == pytest.approx([log_lib.mean(), log_lib.std(ddof=1)])  # global row = [MASK]
    assert set(stats["by_combination"]) == {"0,0", "1,0"}  # 3 cells are too few for a combination of their own
    json.dumps(stats)  # goes into config.json as it is
    query = np.array([[0, 0], [0, 1], [1, 0], [2, 0]])
    mean, sd = D.library_parameters(stats, query, query[:, 0])
    assert mean == pytest.approx([log_lib[:30].mean(), log_lib[:33].mean(), log_lib[33:].mean(), log_lib.mean()])
    # Without a batch key there is one global row.
    single = D.library_statistics(library, codes[:, 1:], np.zeros(len(codes), dtype=int), n_scaler_rows=1)
    assert single["by_scaler"][0][:2] == pytest.approx([log_lib.mean(), log_lib.std(ddof=1)])


def test_sample_counts_follow_the_mean_and_the_library_size():
    rng = np.random.default_rng(1)
    frac = rng.dirichlet(np.full(500, 0.3), size=1)[0]
    lognorm = np.tile(np.log1p(frac * 1e4), (400, 1)).astype(np.float32)

    def draw(log_lib):
        n = len(lognorm)
        return D.sample_counts(lognorm, np.full(n, log_lib), np.full(n, 0.2), np.random.default_rng(2), D.CountStreams(3))

    shallow, deep = draw(np.log(500)), draw(np.log(50_000))
    assert shallow.dtype == np.float32 and (shallow >= 0).all()
    # Fewer counts, more zeros; deep sampling converges to the mean fractions.
    assert (shallow == 0).mean() > (deep == 0).mean() + 0.2
    assert np.corrcoef(np.expm1(deep).mean(0), frac)[0, 1] > 0.99
    assert np.expm1(shallow).sum(1) == pytest.approx(1e4, rel=1e-4)  # each cell is re-normalized to CP10k
    # Negative binomial with a small theta is noisier than Poisson at the same depth.
    nb = D.sample_counts(lognorm, np.full(400, np.log(50_000)), np.full(400, 0.2), np.random.default_rng(2),
                         D.CountStreams(3), theta=np.full(500, 0.5))
    assert nb.var(0).mean() > 2 * deep.var(0).mean()
    # Genes with theta = inf stay Poisson (a dispersion fit may leave some genes there).
    theta = np.where(np.arange(200) % 2 == 0, 0.5, np.inf)
    mixed = D.draw_counts(np.full((2000, 200), 20.0), np.random.default_rng(5), theta, np.random.default_rng(6)).var(0)
    assert mixed[::2].mean() > 10 * mixed[1::2].mean()


def test_log_mean_inverter_recovers_poisson_rates():
    inv = D.LogMeanInverter()
    rng = np.random.default_rng(0)
    for library in (400, 3000, 30000):
        for lam in (0.02, 0.4, 3.0, 40.0, 500.0):
            k = rng.poisson(lam, 400_000)
            target = np.log1p(k * 1e4 / library).mean()
            got = inv.rates(np.array([[target]]), np.array([library]))[0, 0]
            assert got == pytest.approx(lam, rel=0.03), (library, lam)
    # Jensen: the naive rate expm1(mean) * L / 1e4 underestimates sparse genes badly.
    k = rng.poisson(0.3, 400_000)
    target = np.log1p(k * 1e4 / 2000).mean()
    assert np.expm1(target) * 2000 / 1e4 < 0.5 * inv.rates(np.array([[target]]), np.array([2000]))[0, 0]


def test_log_mean_sampling_keeps_the_per_gene_log_means():
    rng = np.random.default_rng(5)
    lam = rng.gamma(0.4, 3.0, size=800)
    library = lam.sum()
    counts = rng.poisson(lam, size=(3000, 800))
    real = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    target = np.tile(real.mean(0), (3000, 1))
    n = len(target)
    args = (np.full(n, np.log(library)), np.zeros(n), np.random.default_rng(1))
    matched = D.sample_counts(target, *args, D.CountStreams(2), rates="log_mean")
    naive = D.sample_counts(target, *args, D.CountStreams(2), rates="fraction")
    err = lambda x: np.abs(x.mean(0) - real.mean(0)).mean()  # noqa: E731
    assert err(matched) < 0.3 * err(naive)
    assert abs((matched == 0).mean() - (real == 0).mean()) < 0.02


def test_sampled_output_has_zeros_like_real_cells(trained):
    model, adata = trained["model"], trained["adata"]
    table = adata.obs[["batch", "cell_type"]]
    sample = model.generate_like(table, seed=0)  # the default output
    mean = model.generate_like(table, seed=0, output="mean")
    assert sample.uns["pysave"]["output"] == "sample" and mean.uns["pysave"]["output"] == "mean"
    assert np.array_equal(sample.obsm["X_save"], mean.obsm["X_save"])  # same flow latents
    real = adata.X.toarray()
    real_zeros = (real == 0).mean()
    assert abs((sample.X == 0).mean() - real_zeros) < abs((mean.X == 0).mean() - real_zeros)
    assert abs((sample.X == 0).mean() - real_zeros) < 0.15
    # Per-gene means still follow the decoder means.
    assert np.corrcoef(sample.X.mean(0), mean.X.mean(0))[0, 1] > 0.95
    # Each sampled cell is log1p(CP10k): expm1 sums to 1e4.
    assert np.expm1(sample.X.astype(np.float64)).sum(1) == pytest.approx(1e4, rel=1e-3)


def test_sampled_output_is_deterministic_and_chunk_independent(trained, tmp_path, monkeypatch):
    import anndata as ad

    # Runs of 4 cells: the 21 cells take 6 runs' count streams, cut by the chunks of 5 and 6.
    monkeypatch.setattr(D, "COUNT_STREAM_ROWS", 4)
    model = trained["model"]
    table = pd.DataFrame({"cell_type": ["B", "NK", "T_CD4"], "batch": ["10x_5prime", None, "10x_3prime_v1"], "n_cells": [7, 5, 9]})
    a = model.generate_like(table, seed=4, batch_size=4096, output="sample")
    b = model.generate_like(table, seed=4, batch_size=5, output="sample")
    assert np.array_equal(a.X, b.X)
    assert a.uns["pysave"]["count_stream_cells"] == 4  # how the counts were drawn, recorded
    assert "count_stream_cells" not in model.generate_like(table, seed=4, output="mean").uns["pysave"]
    c = model.generate_like(table, seed=5, output="sample")
    assert not np.array_equal(a.X, c.X)
    path = model.generate_to_h5ad(str(tmp_path / "s.h5ad"), table, seed=4, batch_size=6, output="sample")
    disk = ad.read_h5ad(path)
    assert np.array_equal(disk.X, a.X) and disk.uns["pysave"]["output"] == "sample"
    with pytest.raises(PySaveError, match="output must be one of"):
        model.generate_like(table, output="median")


def test_library_stats_survive_save_and_load(trained, tmp_path):
    model = trained["model"]
    loaded = pysave.SAVE.load(trained["dir"], device="cpu", verbose=False)
    assert loaded.library_stats == json.loads(json.dumps(model.library_stats))
    x1 = model.generate({"cell_type": "B", "batch": "10x_5prime"}, n_cells=10, seed=3).X
    x2 = loaded.generate({"cell_type": "B", "batch": "10x_5prime"}, n_cells=10, seed=3).X
    assert np.array_equal(x1, x2)
    # A model directory from before library statistics: mean output works, sampling says what to do.
    old = tmp_path / "old"
    model.save(str(old))
    config = json.loads((old / "config.json").read_text())
    del config["library_stats"]
    (old / "config.json").write_text(json.dumps(config))
    legacy = pysave.SAVE.load(str(old), device="cpu", verbose=False)
    assert legacy.generate({"cell_type": "B"}, n_cells=2, output="mean").n_obs == 2
    assert legacy.generate({"cell_type": "B"}, n_cells=2).uns["pysave"]["output"] == "mean"  # the default falls back
    with pytest.raises(PySaveError, match="output='mean'"):
        legacy.generate({"cell_type": "B"}, n_cells=2, output="sample")


def test_transfer_output_kinds(trained):
    model, adata = trained["model"], trained["adata"]
    cells = adata[:20].copy()
    mean = model.transfer(cells, {"batch": "10x_5prime"})
    assert mean.uns["pysave"]["output"] == "mean" and (mean.X == 0).mean() < 0.01
    sample = model.transfer(cells, {"batch": "10x_5prime"}, output="sample", seed=1)
    assert sample.uns["pysave"]["output"] == "sample" and (sample.X == 0).mean() > 0.2
    assert np.array_equal(sample.X, model.transfer(cells, {"batch": "10x_5prime"}, output="sample", seed=1).X)
    assert sample.uns["pysave"]["count_stream_cells"] == D.COUNT_STREAM_ROWS and "count_stream_cells" not in mean.uns["pysave"]


def test_transfer_without_data_uses_the_training_cells(trained):
    """transfer(None, ...) moves the training cells (as get_latent_representation(None) encodes
    them); a model loaded without data says so instead of failing on None."""
    model, adata = trained["model"], trained["adata"]
    for output in ("mean", "input_plus_change"):
        got = model.transfer(None, {"batch": "10x_5prime"}, output=output, via="decoder")
        want = model.transfer(adata, {"batch": "10x_5prime"}, output=output, via="decoder")
        np.testing.assert_allclose(got.X, want.X, atol=1e-6)
        assert list(got.obs_names) == list(adata.obs_names)
    loaded = pysave.SAVE.load(trained["dir"], verbose=False)
    for output in ("mean", "input_plus_change"):
        with pytest.raises(pysave.PySaveError, match="no data given"):
            loaded.transfer(None, {"batch": "10x_5prime"}, output=output)


def test_cli_output_kind(trained, tmp_path):
    import anndata as ad

    runner = CliRunner()
    for kind in ("mean", "sample"):
        out = tmp_path / f"{kind}.h5ad"
        result = runner.invoke(main, ["generate", trained["dir"], "--n", "6", "--set", "cell_type=B", "--out", str(out),
                                      "--output-kind", kind, "--quiet"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert ad.read_h5ad(out).uns["pysave"]["output"] == kind
    default = tmp_path / "default.h5ad"
    assert runner.invoke(main, ["generate", trained["dir"], "--n", "6", "--set", "cell_type=B", "--out", str(default),
                                "--quiet"]).exit_code == 0
    assert ad.read_h5ad(default).uns["pysave"]["output"] == pysave.model.DEFAULT_OUTPUT
    bad = runner.invoke(main, ["generate", trained["dir"], "--n", "2", "--out", str(tmp_path / "x.h5ad"), "--output-kind", "x"])
    assert bad.exit_code != 0 and "--output-kind" in bad.output
    assert not os.path.exists(tmp_path / "x.h5ad")


def test_cli_transfer_output_kind(trained, tmp_path):
    import anndata as ad

    out = tmp_path / "t.h5ad"
    result = CliRunner().invoke(main, ["transfer", trained["dir"], trained["data"], "--set", "batch=10x_5prime", "--out", str(out),
                                       "--output-kind", "sample", "--seed", "2", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    got = ad.read_h5ad(out)
    assert got.uns["pysave"]["output"] == "sample" and got.uns["pysave"]["seed"] == 2
    assert (got.X == 0).mean() > 0.2


def test_transfer_via_flow(trained):
    model, adata = trained["model"], trained["adata"]
    cells = adata[adata.obs["batch"].astype(str) == "10x_3prime_v2"][:30].copy()
    mu = model.get_latent_representation(cells, key_added=None)
    # To the cells' own batch, the flow goes back to noise and returns to (nearly) where it started.
    same = model.transfer(cells, {"batch": "10x_3prime_v2"}, via="flow", guidance=1.0, n_steps=100)
    err = np.linalg.norm(same.obsm["X_save"] - mu, axis=1).mean()
    assert err < 0.1 * np.linalg.norm(mu - mu.mean(0), axis=1).mean()
    moved = model.transfer(cells, {"batch": "10x_5prime"}, via="flow")
    plain = model.transfer(cells, {"batch": "10x_5prime"}, via="decoder")
    assert moved.uns["pysave"]["via"] == "flow" and moved.uns["pysave"]["guidance"] == 2.0
    assert plain.uns["pysave"]["via"] == "decoder" and np.array_equal(plain.obsm["X_save"], mu)
    shift = np.linalg.norm(moved.obsm["X_save"] - mu, axis=1).mean()
    assert shift > 2 * err  # another batch moves the latent
    assert np.array_equal(moved.X, model.transfer(cells, {"batch": "10x_5prime"}, via="flow").X)  # deterministic
    with pytest.raises(PySaveError, match="via must be"):
        model.transfer(cells, {"batch": "10x_5prime"}, via="ode")
    result = CliRunner().invoke(main, ["transfer", trained["dir"], trained["data"], "--set", "batch=10x_5prime", "--via", "flow",
                                       "--steps", "5", "--out", str(os.path.join(os.path.dirname(trained["data"]), "via.h5ad")),
                                       "--overwrite", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_transfer_auto_says_when_the_shift_has_one_stratum(pbmc_small):
    """A model given the batch alone has nothing to stratify the shift by: "auto" still takes it
    (ahead of the flow in benchmarks/try_batch_transfer.py) but its reason says so and what to do."""
    pysave.SAVE.setup_anndata(pbmc_small, condition_keys=["batch"], batch_key="batch")
    model = pysave.SAVE(pbmc_small, verbose=False, **TINY)
    model.train(**{**TINY_TRAIN, "max_epochs": 3, "flow_epochs": 1})
    cells = pbmc_small[pbmc_small.obs["batch"].astype(str) == "10x_3prime_v2"][:20].copy()
    info = model.transfer(cells, {"batch": "10x_5prime"}).uns["pysave"]
    assert info["via"] == "shift" and "one stratum" in info["via_reason"] and "cell type" in info["via_reason"]


def test_transfer_auto_takes_the_shift_where_it_can(trained, tmp_path):
    """The default, via="auto": the latent shift for a named value with training cells behind it,
    the flow for what the shift cannot do (a masked target; a model without the shift's
    statistics), each output the same as asking for that path, and the path taken recorded."""
    import copy

    import anndata as ad

    model, adata = trained["model"], trained["adata"]
    cells = adata[adata.obs["batch"].astype(str) == "10x_3prime_v2"][:20].copy()
    auto = model.transfer(cells, {"batch": "10x_5prime"})
    assert np.array_equal(auto.X, model.transfer(cells, {"batch": "10x_5prime"}, via="shift").X)
    info = auto.uns["pysave"]
    assert info["via"] == "shift" and info["via_requested"] == "auto" and "shift_strata" in info
    assert "one stratum" not in info["via_reason"]  # the cell type stratifies the shift
    masked = model.transfer(cells, {"batch": None}, n_steps=3)
    assert np.array_equal(masked.X, model.transfer(cells, {"batch": None}, via="flow", n_steps=3).X)
    assert masked.uns["pysave"]["via"] == "flow" and "masked" in masked.uns["pysave"]["via_reason"]
    with pytest.raises(PySaveError, match="masked"):  # asked for by name, the shift still refuses
        model.transfer(cells, {"batch": None}, via="shift")
    old = copy.copy(model)  # as loaded from a directory saved before the shift's statistics existed
    old.condition_latents = None
    fallback = old.transfer(cells, {"batch": "10x_5prime"}, n_steps=3)
    assert fallback.uns["pysave"]["via"] == "flow" and "older pysave" in fallback.uns["pysave"]["via_reason"]
    out = str(tmp_path / "auto.h5ad")
    result = CliRunner().invoke(main, ["transfer", trained["dir"], trained["data"], "--set", "batch=10x_5prime", "--out", out],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "via shift" in result.output and ad.read_h5ad(out).uns["pysave"]["via"] == "shift"


def test_transfer_via_shift(trained, tmp_path):
    import anndata as ad

    model, adata = trained["model"], trained["adata"]
    mu_all = model.get_latent_representation(adata, key_added=None)
    obs = adata.obs[["batch", "cell_type"]].astype(str)
    # The kept per-combination latent means are the training cells' encoder means, grouped.
    stats = model.condition_latents
    keys = model.registry["condition_keys"]
    names = [tuple(model.registry["categories"][k][c] for k, c in zip(keys, row)) for row in stats["codes"]]
    grouped = pd.DataFrame(mu_all).groupby([obs["batch"].to_numpy(), obs["cell_type"].to_numpy()]).mean()
    counts = obs.groupby(["batch", "cell_type"]).size()
    assert [counts[n] for n in names] == stats["counts"].tolist()
    np.testing.assert_allclose(stats["means"], grouped.loc[names].to_numpy(), atol=1e-5)
    # The expression PCs kept beside them: fitted on the training cells' log1p(CP10k) (all of them,
    # fewer than EXPRESSION_FIT_CELLS here), with each combination's mean position.
    from pysave.metrics import log_normalized

    lognorm = log_normalized(adata[:, model.genes])
    np.testing.assert_allclose(stats["pc_center"], lognorm.mean(0), atol=1e-4)
    pcs = stats["pc_components"].astype(np.float64)
    assert pcs.shape == (pysave.shift.EXPRESSION_PCS, len(model.genes))
    np.testing.assert_allclose(pcs @ pcs.T, np.eye(len(pcs)), atol=1e-4)
    positions = pysave.shift.expression_positions(stats, lognorm)
    grouped_pcs = pd.DataFrame(positions).groupby([obs["batch"].to_numpy(), obs["cell_type"].to_numpy()]).mean()
    np.testing.assert_allclose(stats["pc_means"], grouped_pcs.loc[names].to_numpy(), atol=1e-3)
    # The shift: per cell type with >= MIN_SHIFT_CELLS cells in both batches, the difference of the
    # two batches' mean latents; each cell takes their mean weighted by a Gaussian kernel on its
    # squared distance, in the expression PCs, to each type's source-batch mean there (width:
    # SHIFT_BANDWIDTH x the median squared distance between those means).
    src, tgt = "10x_3prime_v2", "10x_5prime"
    types = [t for t in obs["cell_type"].unique()
             if counts.get((src, t), 0) >= pysave.shift.MIN_SHIFT_CELLS and counts.get((tgt, t), 0) >= pysave.shift.MIN_SHIFT_CELLS]
    assert len(types) >= 2
    deltas = np.stack([grouped.loc[(tgt, t)].to_numpy() - grouped.loc[(src, t)].to_numpy() for t in types])
    origins = np.stack([grouped.loc[(src, t)].to_numpy() for t in types])
    pc_origins = np.stack([grouped_pcs.loc[(src, t)].to_numpy() for t in types])

    def kernel_shift(points, strata_means):  # the weighted mean of deltas, computed by hand
        d = ((np.asarray(points, dtype=np.float64)[:, None, :] - strata_means[None]) ** 2).sum(-1)
        width = pysave.shift.SHIFT_BANDWIDTH * np.median([((strata_means[i] - strata_means[j]) ** 2).sum()
                                                          for i in range(len(types)) for j in range(i + 1, len(types))])
        weights = np.exp(-(d - d.min(1, keepdims=True)) / width)
        return (weights / weights.sum(1, keepdims=True)) @ deltas

    in_source = obs["batch"].to_numpy() == src
    cells = adata[in_source][:30].copy()
    mu = model.get_latent_representation(cells, key_added=None)
    expected = kernel_shift(positions[in_source][:30], pc_origins)
    moved = model.transfer(cells, {"batch": tgt}, via="shift", shift_neighbours=0)  # the kernel over stratum means
    np.testing.assert_allclose(moved.obsm["X_save"] - mu, expected, atol=1e-4)
    assert moved.uns["pysave"]["shift_weighed_in"] == f"{pysave.shift.EXPRESSION_PCS} expression PCs"
    # Without positions (and for models saved before the PCs existed) the latent places the cells.
    source_codes = model._prepare(cells).codes
    moved_codes = source_codes.copy()
    moved_codes[:, keys.index("batch")] = model._code_of("batch", tgt)
    in_latent, _ = pysave.shift.latent_shifts(stats, mu, source_codes, moved_codes, [keys.index("batch")])
    np.testing.assert_allclose(in_latent, kernel_shift(mu, origins), atol=1e-5)
    assert np.abs(in_latent - expected).max() > 1e-4  # the two places differ
    assert np.ptp(moved.obsm["X_save"] - mu, axis=0).max() > 1e-3  # the shift depends on the cell
    # An infinite width weighs the strata equally (scGen's mean); a narrow one gives a cell sitting
    # on a stratum's source mean that stratum's own shift.
    flat, _ = pysave.shift.latent_shifts(stats, mu, source_codes, moved_codes, [keys.index("batch")], bandwidth=np.inf)
    np.testing.assert_allclose(flat, np.tile(deltas.mean(0), (len(mu), 1)), atol=1e-5)
    equal = model.transfer(cells, {"batch": tgt}, via="shift", shift_bandwidth=float("inf"), shift_neighbours=0)
    np.testing.assert_allclose(equal.obsm["X_save"] - mu, flat, atol=1e-5)
    assert equal.uns["pysave"]["shift_bandwidth"] == float("inf")
    for bad in (0, -1.0, float("nan"), "wide", True):
        with pytest.raises(PySaveError, match="shift_bandwidth must be a positive number"):
            model.transfer(cells, {"batch": tgt}, via="shift", shift_bandwidth=bad)
    sharp, _ = pysave.shift.latent_shifts(stats, origins[:1].astype(np.float32), source_codes[:1], moved_codes[:1],
                                          [keys.index("batch")], bandwidth=1e-6)
    np.testing.assert_allclose(sharp[0], deltas[0], atol=1e-5)
    info = moved.uns["pysave"]
    assert info["via"] == "shift" and info["shift_strata"] == {f"batch={src} -> batch={tgt}": len(types)}
    assert info["shift_bandwidth"] == pysave.shift.SHIFT_BANDWIDTH and info["shift_neighbours"] == 0
    assert "guidance" not in info
    # Decoded under the target conditions: the same latents through the decoder give the same cells.
    assert np.array_equal(moved.X, model._decode(torch_from(moved.obsm["X_save"]), moved_codes))
    assert moved.obs["batch"].astype(str).eq(tgt).all() and moved.obs["batch_source"].astype(str).eq(src).all()
    # To the cells' own batch: no shift.
    same = model.transfer(cells, {"batch": src}, via="shift")
    np.testing.assert_array_equal(same.obsm["X_save"], mu)
    # Local shifts (the default): the kept training cells (all of them here, fewer than
    # SHIFT_KEPT_CELLS per combination) of each stratum matched source to target by exact optimal
    # transport in the latent; a cell takes the mean displacement of its SHIFT_NEIGHBOURS nearest
    # kept source cells in the expression PCs.
    import ot

    k = pysave.shift.SHIFT_NEIGHBOURS
    assert len(stats["cell_latents"]) == adata.n_obs
    np.testing.assert_allclose(stats["cell_latents"], mu_all, atol=1e-5)
    np.testing.assert_allclose(stats["cell_positions"], positions, atol=1e-3)
    moves, places = [], []
    for t in types:
        a, b = (mu_all[(obs["batch"] == side).to_numpy() & (obs["cell_type"] == t).to_numpy()].astype(np.float64)
                for side in (src, tgt))
        plan = ot.emd(ot.unif(len(a)), ot.unif(len(b)), ot.dist(a, b))
        moves.append(plan @ b / plan.sum(1, keepdims=True) - a)
        places.append(stats["cell_positions"][(obs["batch"] == src).to_numpy() & (obs["cell_type"] == t).to_numpy()])
    moves, places = np.concatenate(moves), np.concatenate(places).astype(np.float64)
    assert len(places) > k
    d = ((positions[in_source][:30].astype(np.float64)[:, None, :] - places[None]) ** 2).sum(-1)
    expected_local = moves[np.argsort(d, axis=1)[:, :k]].mean(1)
    local = model.transfer(cells, {"batch": tgt}, via="shift")
    np.testing.assert_allclose(local.obsm["X_save"] - mu, expected_local, atol=1e-4)
    assert local.uns["pysave"]["shift_neighbours"] == k and local.uns["pysave"]["shift_strata"] == info["shift_strata"]
    assert np.abs(expected_local - expected).max() > 1e-3  # not the kernel's shift
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(PySaveError, match="shift_neighbours must be a whole number"):
            model.transfer(cells, {"batch": tgt}, via="shift", shift_neighbours=bad)
    # The means and the kept cells travel with the model directory.
    again = pysave.SAVE.load(trained["dir"], verbose=False)
    assert np.array_equal(again.transfer(cells, {"batch": tgt}, via="shift", shift_neighbours=0).X, moved.X)
    np.testing.assert_array_equal(again.transfer(cells, {"batch": tgt}, via="shift").X, local.X)
    # A model directory saved before the expression PCs and kept cells existed weighs stratum means
    # in the latent, and says so.
    again.condition_latents = {k: v for k, v in stats.items() if not k.startswith(("pc_", "cell_"))}
    older = again.transfer(cells, {"batch": tgt}, via="shift")
    np.testing.assert_allclose(older.obsm["X_save"] - mu, in_latent, atol=1e-5)
    assert older.uns["pysave"]["shift_weighed_in"] == "latent" and older.uns["pysave"]["shift_neighbours"] == 0
    # Refused, with the reason: a masked target, no stratum with both sides, an old model directory, correct().
    with pytest.raises(PySaveError, match="moves cells to a given value"):
        model.transfer(cells, {"batch": None}, via="shift")
    lonely = {k: v.copy() for k, v in stats.items()}
    lonely["counts"][stats["codes"][:, keys.index("batch")] == model._code_of("batch", tgt)] = 1
    again.condition_latents = lonely
    with pytest.raises(PySaveError, match=r"needs training cells of both.*\['cell_type'\].*batch=10x_5prime.*via='flow'"):
        again.transfer(cells, {"batch": tgt}, via="shift")
    again.condition_latents = None
    with pytest.raises(PySaveError, match="older pysave"):
        again.transfer(cells, {"batch": tgt}, via="shift")
    with pytest.raises(PySaveError, match="correct\\(\\) goes via one of"):
        model.correct(cells, via="shift")
    out = tmp_path / "shift.h5ad"
    result = CliRunner().invoke(main, ["transfer", trained["dir"], trained["data"], "--set", f"batch={tgt}", "--via", "shift",
                                       "--shift-neighbours", "0", "--shift-bandwidth", "0.25", "--out", str(out), "--quiet"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = ad.read_h5ad(out).uns["pysave"]
    # every cell of the file: two source batches move (the target's own cells stay, with no entry)
    assert written["via"] == "shift" and written["shift_strata"][f"batch={src} -> batch={tgt}"] == len(types)
    assert written["shift_bandwidth"] == 0.25 and written["shift_neighbours"] == 0
    assert set(written["shift_strata"]) == {f"batch={b} -> batch={tgt}" for b in set(obs["batch"]) - {tgt}}


def test_transfer_input_plus_change(trained, tmp_path):
    """output="input_plus_change": the cells' own log1p(CP10k) plus the decoded change, clipped at 0."""
    import anndata as ad
    import scipy.sparse as sp

    model, adata = trained["model"], trained["adata"]
    src, tgt = "10x_3prime_v2", "10x_5prime"
    cells = adata[adata.obs["batch"].astype(str) == src][:30].copy()
    counts = cells.X.toarray() if sp.issparse(cells.X) else np.asarray(cells.X)
    own = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    for via in ("shift", "decoder", "flow"):
        kw = dict(via=via, n_steps=5)
        moved = model.transfer(cells, {"batch": tgt}, **kw)
        home = model.transfer(cells, {"batch": src}, via="decoder")
        got = model.transfer(cells, {"batch": tgt}, output="input_plus_change", **kw)
        np.testing.assert_allclose(got.X, np.maximum(own + moved.X - home.X, 0), atol=1e-4)
        assert got.uns["pysave"]["output"] == "input_plus_change" and "clipped at 0" in got.uns["pysave"]["output_description"]
        np.testing.assert_array_equal(got.obsm["X_save"], moved.obsm["X_save"])
    # No change asked (the cells' own batch, latent kept): the cells come back as they were.
    same = model.transfer(cells, {"batch": src}, output="input_plus_change", via="decoder")
    np.testing.assert_allclose(same.X, own, atol=1e-4)
    # Genes in another order, extra genes, and a backed file give the same cells.
    shuffled = cells[:, ::-1].copy()
    np.testing.assert_allclose(model.transfer(shuffled, {"batch": tgt}, output="input_plus_change", via="shift").X,
                               model.transfer(cells, {"batch": tgt}, output="input_plus_change", via="shift").X, atol=1e-5)
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    np.testing.assert_allclose(model.transfer(backed, {"batch": tgt}, output="input_plus_change", via="shift").X,
                               model.transfer(cells, {"batch": tgt}, output="input_plus_change", via="shift").X, atol=1e-5)
    backed.file.close()
    with pytest.raises(PySaveError, match=r"transfer's output must be one of \['sample', 'mean', 'input_plus_change'\]"):
        model.transfer(cells, {"batch": tgt}, output="residual")
    with pytest.raises(PySaveError, match="output must be one of"):
        model.generate({"cell_type": "B"}, n_cells=2, output="input_plus_change")
    out = tmp_path / "plus.h5ad"
    result = CliRunner().invoke(main, ["transfer", trained["dir"], str(path), "--set", f"batch={tgt}", "--via", "shift",
                                       "--output-kind", "input_plus_change", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = ad.read_h5ad(out)
    assert written.uns["pysave"]["output"] == "input_plus_change"
    np.testing.assert_allclose(written.X, model.transfer(cells, {"batch": tgt}, output="input_plus_change", via="shift").X, atol=1e-5)


def test_generate_shift_from(trained, tmp_path):
    """An unseen or rare combination generated by way of another: the flow samples under
    shift_from's values, the latent shift moves each latent to the asked ones."""
    import anndata as ad

    model, keys = trained["model"], trained["model"].registry["condition_keys"]
    src, tgt, cell_type = "10x_3prime_v2", "10x_5prime", "T_CD4"
    base = model.generate({"batch": src, "cell_type": cell_type}, n_cells=12, seed=3, guidance=1, output="mean")
    moved = model.generate({"batch": tgt, "cell_type": cell_type}, n_cells=12, seed=3, guidance=1, output="mean",
                           shift_from={"batch": src})
    source_codes = model._generation_plan(base.obs[keys].astype(str), 1, 10, "midpoint")[1]
    target_codes = source_codes.copy()
    target_codes[:, keys.index("batch")] = model._code_of("batch", tgt)
    # Weighed by where each sampled cell's decoded expression lies in the expression PCs: the
    # source cells decoded with their combination's offsets (shift_from takes no spread
    # calibration, which base.X has: its pilot is the source's own draw).
    stats = model.condition_latents
    assert base.uns["pysave"]["spread_calibrated_cells"] == 12 and moved.uns["pysave"]["spread_calibrated_cells"] == 0
    sampled = pysave.calibration.Calibration(stats).apply(model._decode(torch_from(base.obsm["X_save"]), source_codes), source_codes)
    shifts, _ = pysave.shift.latent_shifts(stats, base.obsm["X_save"], source_codes, target_codes, [keys.index("batch")],
                                           positions=pysave.shift.expression_positions(stats, sampled),
                                           neighbours=pysave.shift.SHIFT_NEIGHBOURS)
    np.testing.assert_allclose(moved.obsm["X_save"], base.obsm["X_save"] + shifts, atol=1e-4)
    assert np.abs(shifts).max() > 1e-3
    # decoded under the asked conditions, with their combination's calibration (pysave.calibration)
    decoded = pysave.calibration.Calibration(stats).apply(model._decode(torch_from(moved.obsm["X_save"]), target_codes), target_codes)
    np.testing.assert_allclose(moved.X, decoded, atol=1e-6)
    assert moved.obs["batch"].astype(str).eq(tgt).all()
    info = moved.uns["pysave"]
    assert info["shift_from"] == {"batch": src} and info["shift_bandwidth"] == pysave.shift.SHIFT_BANDWIDTH
    assert info["shift_weighed_in"] == f"{pysave.shift.EXPRESSION_PCS} expression PCs"
    assert info["shift_neighbours"] == pysave.shift.SHIFT_NEIGHBOURS
    kernel = model.generate({"batch": tgt, "cell_type": cell_type}, n_cells=12, seed=3, guidance=1, output="mean",
                            shift_from={"batch": src}, shift_neighbours=0)
    assert kernel.uns["pysave"]["shift_neighbours"] == 0 and np.abs(kernel.obsm["X_save"] - moved.obsm["X_save"]).max() > 1e-4
    counts = trained["adata"].obs.groupby(["batch", "cell_type"], observed=False).size()
    n_strata = sum(min(counts.get((src, t), 0), counts.get((tgt, t), 0)) >= pysave.shift.MIN_SHIFT_CELLS
                   for t in model.registry["categories"]["cell_type"])
    assert n_strata >= 2 and info["shift_strata"] == {f"batch={src} -> batch={tgt}": n_strata}
    assert "shift_from" in info["output_description"]
    # A table row already at shift_from's values is sampled as it is; chunks and the h5ad stream agree.
    table = pd.DataFrame({"batch": [tgt, src], "cell_type": [cell_type, cell_type], "n_cells": [5, 4]})
    whole = model.generate_like(table, seed=1, shift_from={"batch": src})
    chunked = model.generate_like(table, seed=1, shift_from={"batch": src}, batch_size=3)
    np.testing.assert_allclose(chunked.obsm["X_save"], whole.obsm["X_save"], atol=1e-5)
    plain = model.generate_like(table, seed=1)
    np.testing.assert_allclose(whole.obsm["X_save"][5:], plain.obsm["X_save"][5:], atol=1e-5)
    path = model.generate_to_h5ad(str(tmp_path / "shifted.h5ad"), table, seed=1, batch_size=3, shift_from={"batch": src})
    streamed = ad.read_h5ad(path)
    np.testing.assert_allclose(streamed.X, chunked.X, atol=1e-6)
    assert streamed.uns["pysave"]["shift_from"] == {"batch": src}
    # Refused with the reason.
    for bad, match in (({"batch": None}, "cannot be masked"), ("batch", "must be a dict"), ({"tissue": "x"}, "not a condition")):
        with pytest.raises(PySaveError, match=match):
            model.generate({"batch": tgt}, n_cells=2, shift_from=bad)
    with pytest.raises(PySaveError, match=r"would be masked; name a value, or generate without shift_from"):
        model.generate({"cell_type": cell_type}, n_cells=2, shift_from={"batch": src})
    with pytest.raises(PySaveError, match="shift_bandwidth must be a positive number"):
        model.generate({"batch": tgt}, n_cells=2, shift_from={"batch": src}, shift_bandwidth=-1)
    again = pysave.SAVE.load(trained["dir"], verbose=False)
    again.condition_latents = None
    with pytest.raises(PySaveError, match="older pysave.*generate without shift_from"):
        again.generate({"batch": tgt}, n_cells=2, shift_from={"batch": src})
    lonely = {k: v.copy() for k, v in model.condition_latents.items()}
    lonely["counts"][lonely["codes"][:, keys.index("batch")] == model._code_of("batch", tgt)] = 1
    again.condition_latents = lonely
    with pytest.raises(PySaveError, match="needs training cells of both.*generate without shift_from"):
        again.generate_to_h5ad(str(tmp_path / "never.h5ad"), pd.DataFrame({"batch": [tgt]}), shift_from={"batch": src})
    assert not (tmp_path / "never.h5ad").exists()
    out = tmp_path / "cli.h5ad"
    result = CliRunner().invoke(main, ["generate", trained["dir"], "--set", f"batch={tgt}", "--set", f"cell_type={cell_type}",
                                       "--n", "4", "--shift-from", f"batch={src}", "--guidance", "1", "--out", str(out),
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).uns["pysave"]["shift_strata"] == {f"batch={src} -> batch={tgt}": n_strata}
    result = CliRunner().invoke(main, ["generate", trained["dir"], "--set", f"batch={tgt}", "--n", "4", "--shift-from", src,
                                       "--out", str(tmp_path / "x.h5ad")])
    assert result.exit_code != 0 and "--shift-from needs KEY=VALUE" in result.output


def test_never_seen_names_the_changes_that_reach_a_combination():
    """never_seen: fully given combinations without training cells, each with the one-condition
    changes to a seen combination, ranked by the strata (3+ cells on both sides) the shift is learned from."""
    # condition (0 ctrl, 1 stim) x cell type (0, 1, 2); stim x type 2 never seen; type 1 has 2 stim cells only.
    stats = {"codes": np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]), "counts": np.array([50, 40, 30, 60, 2])}
    found = pysave.shift.never_seen(np.array([[1, 2], [1, 2], [0, 0], [2, 2], [1, 3]]), stats, mask_codes=[2, 3])
    assert len(found) == 1 and found[0][0].tolist() == [1, 2]  # seen and masked rows are not combinations
    # ctrl -> stim is learned from type 0 only (type 1's 2 stim cells are too few); type 0 -> 2 from ctrl only;
    # type 1 -> 2 from nothing (stim x type 1 has 2 cells), so it is left out.
    assert found[0][1] == [(0, 0, 1), (1, 0, 1)]
    stats["counts"][4] = 20  # now ctrl -> stim is learned from types 0 and 1
    assert pysave.shift.never_seen(np.array([[1, 2]]), stats, mask_codes=[2, 3])[0][1] == [(0, 0, 2), (1, 0, 1), (1, 1, 1)]


def test_generate_warns_for_a_never_seen_combination(trained, tmp_path, monkeypatch):
    """A combination with no training cell, asked for without shift_from, warns (Python and CLI)
    and is recorded; with shift_from, or for seen combinations, nothing is said."""
    import anndata as ad

    model = pysave.SAVE.load(trained["dir"], verbose=False)
    keys = model.registry["condition_keys"]
    stats = {k: v.copy() for k, v in model.condition_latents.items()}
    target = ("10x_5prime", "T_CD4")
    row = (stats["codes"] == [model._code_of(k, v) for k, v in zip(keys, target)]).all(1)
    stats["counts"][row] = 0  # as if no training cell had it (its calibration is kept: only the warning is tested)
    model.condition_latents = stats
    conditions = dict(zip(keys, target))
    with pytest.warns(pysave.PySaveWarning, match=r"1 combination\(s\) asked for were never seen in training "
                                                  r"\(batch=10x_5prime, cell_type=T_CD4\).*shift_from batch=") as caught:
        gen = model.generate(conditions, n_cells=3, seed=0)
    # generate() calls generate_like(): the warning still points at this line, not into pysave
    assert os.path.samefile(caught[0].filename, __file__)
    assert list(gen.uns["pysave"]["never_seen_combinations"]) == ["batch=10x_5prime, cell_type=T_CD4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate({"batch": "10x_3prime_v2", "cell_type": "T_CD4"}, n_cells=2)
        model.generate({"cell_type": "T_CD4"}, n_cells=2)  # a masked condition is no combination
        model.generate(conditions, n_cells=2, guidance=1, shift_from={"batch": "10x_3prime_v2"})
    # The CLI, in a real process (under pytest warnings are recorded, not printed), on the shared fixture
    # model, which has no 10x_3prime_v2 x NK cell: one plain line that names the CLI's own option.
    import subprocess
    import sys

    fixture = os.path.join(os.path.dirname(__file__), "..", "..", "shared-tests", "fixtures", "tiny_model")
    out = tmp_path / "never.h5ad"
    r = subprocess.run([sys.executable, "-m", "pysave", "generate", fixture, "--set", "batch=10x_3prime_v2", "--set",
                        "cell_type=NK", "--n", "3", "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if "never seen" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: 1 combination(s) asked for were never seen in training")
    assert "--shift-from batch=10x_5prime" in lines[0] and "PySaveWarning" not in r.stderr
    assert list(ad.read_h5ad(out).uns["pysave"]["never_seen_combinations"]) == ["batch=10x_3prime_v2, cell_type=NK"]
    # With no seen combination one condition away, no shift_from is named; the default guidance
    # already samples the combination at 1, and a weight given other than 1 is told so.
    row = np.array([model._code_of(k, v) for k, v in zip(keys, target)])
    monkeypatch.setattr(model, "_never_seen", lambda codes: [(row, [])])
    with pytest.warns(pysave.PySaveWarning, match=r"shift_from cannot reach them\.$") as caught:
        model.generate(conditions, n_cells=2, seed=0)
    assert "Python shift_from=" not in str(caught[0].message)
    with pytest.warns(pysave.PySaveWarning, match=r"shift_from cannot reach them\. guidance=2 was given: guidance 1, which "
                                                  r"the default gives never-seen combinations \(leave it out: Python guidance=None"):
        model.generate(conditions, n_cells=2, seed=0, guidance=2)


def test_default_guidance_weighs_each_row_by_its_combination():
    """guidance=None, the default: rows of a combination seen in training (or with a masked
    condition) are sampled at DEFAULT_GUIDANCE and rows of a never-seen one at NEVER_SEEN_GUIDANCE,
    in one call and with the same noise per row; a call of one kind samples exactly as with its
    weight given; with shift_from the row's own (target) combination decides; bad weights are refused."""
    from pysave.model import DEFAULT_GUIDANCE, NEVER_SEEN_GUIDANCE

    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared-tests")
    model = pysave.SAVE.load(os.path.join(shared, "fixtures", "tiny_model"), verbose=False)
    seen, never = ("10x_3prime_v1", "B"), ("10x_3prime_v2", "NK")  # 5 training cells / none
    table = pd.DataFrame([seen] * 3 + [never] * 3 + [(None, "B")] * 2, columns=["batch", "cell_type"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the never-seen warning; its text is tested above
        auto = model.generate_like(table, seed=7, output="mean")
        at = {w: model.generate_like(table, seed=7, output="mean", guidance=w) for w in (DEFAULT_GUIDANCE, NEVER_SEEN_GUIDANCE)}
        chunked = model.generate_like(table, seed=7, output="mean", batch_size=3)
    info = auto.uns["pysave"]
    assert (info["guidance"], info["guidance_seen"], info["guidance_never_seen"], info["guidance_never_seen_cells"]) == (
        "auto", DEFAULT_GUIDANCE, NEVER_SEEN_GUIDANCE, 3)
    is_never = np.arange(8) // 3 == 1
    np.testing.assert_allclose(auto.X[is_never], at[NEVER_SEEN_GUIDANCE].X[is_never], atol=1e-5, rtol=0)
    np.testing.assert_allclose(auto.X[~is_never], at[DEFAULT_GUIDANCE].X[~is_never], atol=1e-5, rtol=0)
    assert np.abs(auto.X[is_never] - at[DEFAULT_GUIDANCE].X[is_never]).max() > 1e-2  # the weights do differ
    np.testing.assert_allclose(chunked.X, auto.X, atol=1e-5, rtol=0)  # chunks mixing both kinds or not
    # One kind per call: exactly the single weight's cells, recorded as "auto" with the count
    only_seen = model.generate(dict(zip(["batch", "cell_type"], seen)), n_cells=4, seed=1, output="mean")
    np.testing.assert_array_equal(only_seen.X, model.generate(dict(zip(["batch", "cell_type"], seen)), n_cells=4, seed=1,
                                                              output="mean", guidance=DEFAULT_GUIDANCE).X)
    assert only_seen.uns["pysave"]["guidance_never_seen_cells"] == 0
    target, source = dict(zip(["batch", "cell_type"], never)), {"batch": "10x_5prime"}
    by_shift = model.generate(target, n_cells=4, seed=1, output="mean", shift_from=source)  # sampled under a seen one
    np.testing.assert_array_equal(by_shift.X, model.generate(target, n_cells=4, seed=1, output="mean", shift_from=source,
                                                             guidance=NEVER_SEEN_GUIDANCE).X)
    assert by_shift.uns["pysave"]["guidance_never_seen_cells"] == 4
    given = model.generate(target, n_cells=2, seed=1, output="mean", shift_from=source, guidance=2)
    assert given.uns["pysave"]["guidance"] == 2.0 and "guidance_seen" not in given.uns["pysave"]
    for bad in (float("nan"), float("inf"), "2", True):
        with pytest.raises(PySaveError, match=r"guidance must be a finite number, e\.g\. 1 for the plain conditional model, or left at "
                                             r"its default \(None in Python, NULL in R, no --guidance on the CLI: 1\.5 for"):
            model.generate({"cell_type": "B"}, n_cells=2, guidance=bad)
    cells = pysave.io.read_h5ad(os.path.join(shared, "fixtures", "pbmc_tiny.h5ad"))[:4].copy()
    for bad in (None, float("nan")):  # transfer's flow takes one weight; refused whatever the route
        with pytest.raises(PySaveError, match=r"guidance must be a finite number, e\.g\. 1 for the plain conditional model; got"):
            model.transfer(cells, {"batch": "10x_5prime"}, via="decoder", guidance=bad)


def test_flow_transfer_into_never_seen_combinations_warns(tmp_path, monkeypatch):
    """transfer through the flow into combinations no training cell had warns (naming via='auto' when
    the flow was asked for; saying why when via='auto' fell back to it), also as one plain CLI line;
    the decoder route and seen targets are not warned about."""
    import anndata as ad
    import subprocess
    import sys

    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared-tests")
    fixture = os.path.join(shared, "fixtures", "tiny_model")
    model = pysave.SAVE.load(fixture, verbose=False)
    cells = pysave.io.read_h5ad(os.path.join(shared, "fixtures", "pbmc_tiny.h5ad"))
    nk = cells[cells.obs["cell_type"] == "NK"].copy()  # no 10x_3prime_v2 x NK training cell
    with pytest.warns(pysave.PySaveWarning, match=r"1 target combination\(s\) were never seen in training "
                                                  r"\(batch=10x_3prime_v2, cell_type=NK\).*The default route, via='auto'"):
        moved = model.transfer(nk, {"batch": "10x_3prime_v2"}, via="flow", n_steps=3)
    assert list(moved.uns["pysave"]["never_seen_combinations"]) == ["batch=10x_3prime_v2, cell_type=NK"]

    def no_shift(*args, **kwargs):
        raise pysave.PySaveError("no strata (as a model without them)")

    monkeypatch.setattr(model, "_shifted", no_shift)
    with pytest.warns(pysave.PySaveWarning, match=r"via='auto' took the flow because the latent shift could not be "
                                                  r"used: no strata \(as a model without them\)"):
        fell_back = model.transfer(nk, {"batch": "10x_3prime_v2"}, n_steps=3)
    assert fell_back.uns["pysave"]["via"] == "flow" and fell_back.uns["pysave"]["never_seen_combinations"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.transfer(nk, {"batch": "10x_5prime"}, via="flow", n_steps=3)  # seen: NK has 10x_5prime cells
        model.transfer(nk, {"batch": "10x_3prime_v2"}, via="decoder")
    out = tmp_path / "moved.h5ad"
    r = subprocess.run([sys.executable, "-m", "pysave", "transfer", fixture, os.path.join(shared, "fixtures", "pbmc_tiny.h5ad"),
                        "--set", "batch=10x_3prime_v2", "--via", "flow", "--steps", "3", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if "never seen" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: 3 target combination(s) were never seen in training")
    assert "CLI --via auto" in lines[0] and "PySaveWarning" not in r.stderr
    assert len(ad.read_h5ad(out).uns["pysave"]["never_seen_combinations"]) == 3


def test_correct_via_flow_into_never_seen_combinations_names_its_own_default():
    """correct(via="flow") to a reference batch some cell type never had warns like transfer, but
    its advice names correct()'s own default (via='decoder'; correct has no via='auto'), and the
    warning points at the caller's line, not into pysave."""
    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared-tests")
    model = pysave.SAVE.load(os.path.join(shared, "fixtures", "tiny_model"), verbose=False)
    cells = pysave.io.read_h5ad(os.path.join(shared, "fixtures", "pbmc_tiny.h5ad"))
    nk = cells[cells.obs["cell_type"] == "NK"].copy()  # no 10x_3prime_v2 x NK training cell
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.correct(nk, reference="10x_3prime_v2", via="flow", n_steps=3, layer_added=None)
    seen = [w for w in caught if "never seen" in str(w.message)]
    assert len(seen) == 1 and seen[0].category is pysave.PySaveWarning
    message = str(seen[0].message)
    assert "(batch=10x_3prime_v2, cell_type=NK)" in message
    assert "correct()'s default route, via='decoder'" in message and "via='auto'" not in message
    assert os.path.samefile(seen[0].filename, __file__)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.correct(nk, reference="10x_3prime_v2", via="decoder", layer_added=None)  # the latent stays: no flow


def torch_from(array):
    import torch

    return torch.from_numpy(np.asarray(array))


def test_guidance_warns_when_the_unconditional_field_is_untrained(trained):
    import warnings

    model, adata = trained["model"], trained["adata"]
    cells = adata[:5].copy()
    saved = model.params["mask_prob"], model.params["mask_all_prob"]
    model.params["mask_prob"] = model.params["mask_all_prob"] = 0.0  # as if trained without condition masking
    try:
        from pysave.model import DEFAULT_GUIDANCE

        with pytest.warns(UserWarning, match=f"mask_prob=0.*guidance={DEFAULT_GUIDANCE:g}") as caught:
            model.generate({"cell_type": "B"}, n_cells=3, guidance=DEFAULT_GUIDANCE)  # a w given (not 1)
        assert os.path.samefile(caught[0].filename, __file__)  # the user's line, not generate_like's call
        with pytest.warns(UserWarning, match="mask_prob=0"):
            model.transfer(cells, {"batch": "10x_5prime"}, via="flow", n_steps=2)  # w = 2
        with pytest.warns(UserWarning, match="mask_prob=0"):
            model.transfer(cells, {"batch": None}, n_steps=2)  # "auto" takes the flow for a masked target
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.generate({"cell_type": "B"}, n_cells=3, guidance=1.0)
            # the default guidance takes 1 for every row when there is no unconditional field to mix in
            auto = model.generate({"cell_type": "B"}, n_cells=3)
            assert (auto.uns["pysave"]["guidance_seen"], auto.uns["pysave"]["guidance_never_seen"]) == (1.0, 1.0)
            model.transfer(cells, {"batch": "10x_5prime"}, via="decoder")
            model.transfer(cells, {"batch": "10x_5prime"})  # "auto" takes the shift: no flow, no warning
    finally:
        model.params["mask_prob"], model.params["mask_all_prob"] = saved
    with pytest.raises(PySaveError, match="n_steps must be at least 1"):
        model.transfer(cells, {"batch": "10x_5prime"}, via="decoder", n_steps=0)


def test_masked_condition_warns_when_the_vae_never_saw_a_mask(trained):
    import warnings

    model, adata = trained["model"], trained["adata"]
    cells = adata[:5].copy()
    saved = model.params["vae_mask_prob"]
    model.params["vae_mask_prob"] = 0.0  # as if trained without masking in the VAE: its [MASK] rows are untrained
    try:
        with pytest.warns(UserWarning, match=r"vae_mask_prob=0.*\['batch'\] is masked.*reference='all'") as caught:
            model.correct(cells, layer_added=None, reference="[MASK]")  # the mask asked for by name
        assert os.path.samefile(caught[0].filename, __file__)  # the caller's line, not pysave's
        with pytest.warns(UserWarning, match=r"vae_mask_prob=0.*\['batch'\] is masked"):
            model.correct(cells, layer_added=None, via="flow", n_steps=2)  # the flow decodes with the batch masked
        with pytest.warns(UserWarning, match=r"vae_mask_prob=0.*\['batch'\]") as caught:
            model.generate({"cell_type": "B"}, n_cells=3, guidance=1.0)  # the batch left to the model
        assert os.path.samefile(caught[0].filename, __file__)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every condition named: no warning
            everywhere = model.correct(cells, layer_added=None, reference="all")
            # the default cannot mask the batch here, so it is the mean over batches, silently
            np.testing.assert_array_equal(model.correct(cells, layer_added=None), everywhere)
            model.transfer(cells, {"batch": "10x_5prime"}, via="decoder")
            model.get_latent_representation(cells, key_added=None)
    finally:
        model.params["vae_mask_prob"] = saved
    # a model that masked in its VAE keeps the masked batch as the default
    assert not np.allclose(model.correct(cells, layer_added=None), everywhere)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model that masked in its VAE does not warn
        model.correct(cells, layer_added=None)


def test_bf16_sampling_is_close_recorded_and_checked(trained, tmp_path):
    import anndata as ad

    model, adata = trained["model"], trained["adata"]
    full = model.generate({"cell_type": "B"}, n_cells=40, seed=3, output="mean")
    assert full.uns["pysave"]["precision"] == "32"  # auto on the CPU
    low = model.generate({"cell_type": "B"}, n_cells=40, seed=3, output="mean", precision="bf16")
    assert low.uns["pysave"]["precision"] == "bf16" and low.X.dtype == np.float32
    # The same noise through a bf16 flow and decoder: the same cells up to bf16 rounding.
    assert not np.array_equal(low.X, full.X)
    assert np.abs(low.obsm["X_save"] - full.obsm["X_save"]).mean() < 0.05 * np.abs(full.obsm["X_save"]).mean()
    assert np.corrcoef(low.X.ravel(), full.X.ravel())[0, 1] > 0.99
    moved = model.transfer(adata[:10].copy(), {"batch": "10x_5prime"}, precision="bf16")
    assert moved.uns["pysave"]["precision"] == "bf16"
    with pytest.raises(PySaveError, match="precision must be one of"):
        model.generate({"cell_type": "B"}, n_cells=2, precision="fp16")
    out = tmp_path / "bf16.h5ad"
    result = CliRunner().invoke(main, ["generate", trained["dir"], "--n", "5", "--set", "cell_type=B", "--precision", "bf16",
                                       "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).uns["pysave"]["precision"] == "bf16"
    moved_out = tmp_path / "moved.h5ad"
    result = CliRunner().invoke(main, ["transfer", trained["dir"], trained["data"], "--set", "batch=10x_5prime", "--steps", "3",
                                       "--precision", "bf16", "--out", str(moved_out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(moved_out).uns["pysave"]["precision"] == "bf16"
    bad = CliRunner().invoke(main, ["generate", trained["dir"], "--n", "2", "--precision", "16", "--out", str(tmp_path / "x.h5ad")])
    assert bad.exit_code != 0 and "--precision" in bad.output and not os.path.exists(tmp_path / "x.h5ad")


def test_sampling_auto_precision_is_full_precision_on_a_gpu(trained, monkeypatch):
    """Sampling's "auto" is fp32 on CUDA too (bf16 there makes cells depend on batch_size);
    training's "auto" stays bf16 on CUDA. The device is only named here, nothing runs on it."""
    import torch

    from pysave.train import resolve_precision

    model = trained["model"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(model, "device", torch.device("cuda"))
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"  # training
    assert model._precision("auto") == "32"
    assert model._precision("bf16") == "bf16" and model._precision("32") == "32"
    with pytest.raises(PySaveError, match="precision must be one of"):
        model._precision("fp16")


def test_kept_shift_cells(monkeypatch):
    """train() keeps up to SHIFT_KEPT_CELLS cells of each combination (by seed) for the local shifts,
    fewer of each when the combinations would hold more than SHIFT_KEPT_TOTAL."""
    import torch

    codes = np.random.default_rng(0).integers(0, 3, size=(600, 2))
    mu = torch.randn(600, 8, generator=torch.Generator().manual_seed(0))
    positions = np.random.default_rng(1).random((600, 5)).astype(np.float32)
    combos, group = np.unique(codes, axis=0, return_inverse=True)
    group = np.asarray(group).reshape(-1)
    kept = pysave.shift.kept_shift_cells(mu, positions, codes, seed=3, per_combination=20)
    assert np.bincount(kept["cell_groups"], minlength=len(combos)).tolist() == [min(20, n) for n in np.bincount(group)]
    # each kept row is one training cell: its latent, its position and its combination
    rows = [int(np.flatnonzero((mu.numpy() == z).all(1))[0]) for z in kept["cell_latents"]]
    np.testing.assert_array_equal(kept["cell_positions"], positions[rows])
    np.testing.assert_array_equal(kept["cell_groups"], group[rows])
    assert len(set(rows)) == len(rows)
    again = pysave.shift.kept_shift_cells(mu, positions, codes, seed=3, per_combination=20)
    np.testing.assert_array_equal(again["cell_latents"], kept["cell_latents"])  # the seed decides
    monkeypatch.setattr(pysave.shift, "SHIFT_KEPT_TOTAL", 45)
    capped = pysave.shift.kept_shift_cells(mu, positions, codes, seed=3, per_combination=20)
    assert np.bincount(capped["cell_groups"]).max() == 45 // len(combos)
    assert pysave.shift.kept_shift_cells(mu, None, codes, seed=3) == {}


def test_transfer_streamed_to_a_file_equals_the_in_memory_result(trained, tmp_path, monkeypatch):
    """transfer_to_h5ad (and the CLI, also with --backed input) writes chunk by chunk what
    transfer() returns; the chunk size changes nothing, sampled and input_plus_change outputs included."""
    import anndata as ad

    from pysave import loader

    model, adata = trained["model"], trained["adata"]
    cells = adata[:50].copy()
    kinds = [dict(output="sample", seed=4, via="shift"), dict(output="input_plus_change", via="decoder"),
             dict(output="mean", via="flow", n_steps=2)]
    whole = [model.transfer(cells, {"batch": "10x_5prime"}, **kw) for kw in kinds]
    for i, (kw, expected) in enumerate(zip(kinds, whole)):
        path = model.transfer_to_h5ad(str(tmp_path / f"t{i}.h5ad"), cells, {"batch": "10x_5prime"}, **kw)
        got = ad.read_h5ad(path)
        np.testing.assert_array_equal(got.X, expected.X)
        np.testing.assert_array_equal(got.obsm["X_save"], expected.obsm["X_save"])
        assert got.obs.equals(expected.obs) and got.uns["pysave"]["output"] == kw["output"]
    monkeypatch.setattr(loader, "DEFAULT_CHUNK_SIZE", 7)  # 8 chunks, the last one short
    for kw, expected in zip(kinds, whole):
        # Equal up to float rounding (the decoder's matrix products see other shapes); a
        # sampled count may flip where a rate sits on a rounding edge.
        X = model.transfer(cells, {"batch": "10x_5prime"}, **kw).X
        if kw["output"] == "sample":
            assert np.mean(X != expected.X) < 1e-3
        else:
            np.testing.assert_allclose(X, expected.X, atol=1e-5)
    monkeypatch.undo()
    with pytest.raises(PySaveError, match="already exists"):
        model.transfer_to_h5ad(str(tmp_path / "t0.h5ad"), cells, {"batch": "10x_5prime"})
    with pytest.raises(PySaveError, match="not-a-batch"):
        model.transfer_to_h5ad(str(tmp_path / "bad.h5ad"), cells, {"batch": "not-a-batch"})
    assert sorted(os.listdir(tmp_path)) == ["t0.h5ad", "t1.h5ad", "t2.h5ad"]  # a refused call leaves nothing
    out = tmp_path / "cli.h5ad"
    result = CliRunner().invoke(main, ["transfer", trained["dir"], trained["data"], "--set", "batch=10x_5prime", "--backed",
                                       "--output-kind", "sample", "--via", "decoder", "--seed", "2", "--out", str(out),
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = trained["model"].transfer(ad.read_h5ad(trained["data"]), {"batch": "10x_5prime"}, output="sample", seed=2,
                                         via="decoder")
    np.testing.assert_array_equal(ad.read_h5ad(out).X, expected.X)


def test_transfer_reports_its_stages(trained, capsys, monkeypatch):
    """Long transfers and corrections show progress: each stage on stderr when the call takes
    more than one batch, nothing for a call of one batch or a quiet model."""
    model, adata = trained["model"], trained["adata"]
    cells = adata[:40].copy()
    monkeypatch.setattr(model, "verbose", True)
    model.transfer(cells, {"batch": "10x_5prime"}, via="shift", batch_size=16)
    err = capsys.readouterr().err
    for stage in ("encoded 40 cells", "shifted by local latent shifts", "decoded under the target"):
        assert f"transfer: {stage}" in err
    model.transfer(cells, {"batch": "10x_5prime"}, via="flow", n_steps=2, batch_size=16)
    assert "transfer: moved through the flow" in capsys.readouterr().err
    model.transfer(cells, {"batch": "10x_5prime"}, via="decoder", batch_size=64)
    assert "transfer:" not in capsys.readouterr().err
    model.correct(cells, reference="all", batch_size=16, layer_added=None, latent_key_added=None)
    err = capsys.readouterr().err
    assert "correct: encoded 40 cells" in err and "correct: decoded under" in err
    monkeypatch.setattr(model, "verbose", False)
    model.transfer(cells, {"batch": "10x_5prime"}, via="decoder", batch_size=16)
    assert "transfer:" not in capsys.readouterr().err


def test_nearest_mean_matches_a_full_sort():
    """The local shifts' neighbour search (one matrix product and torch's top-k per batch) finds
    the same neighbours as sorting the exact distances, across batches and with k >= the pool."""
    rng = np.random.default_rng(0)
    places, moves = rng.normal(size=(300, 5)) * [5, 3, 2, 1, 0.5], rng.normal(size=(300, 4))
    positions = rng.normal(size=(70, 5)).astype(np.float32) * 3
    d = ((positions.astype(np.float64)[:, None] - places[None]) ** 2).sum(-1)
    for k in (1, 7, 300, 500):
        expected = moves[np.argsort(d, axis=1)[:, :min(k, 300)]].mean(1)
        got = pysave.shift._nearest_mean(moves, places, positions, k, batch=16)  # 5 batches, the last short
        assert got.dtype == np.float32 and got.shape == (70, 4)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_local_shifts_solve_transport_once(trained, monkeypatch):
    """Generation shifts chunk after chunk: with a ``transport`` dict the strata's optimal transport
    is solved on the first call only, and the shifts are those of a fresh solve."""
    import ot

    model, keys = trained["model"], trained["model"].registry["condition_keys"]
    stats = model.condition_latents
    src, tgt = model._code_of("batch", "10x_3prime_v2"), model._code_of("batch", "10x_5prime")
    rows = stats["codes"][:, keys.index("batch")] == src
    source = stats["codes"][rows]
    target = source.copy()
    target[:, keys.index("batch")] = tgt
    positions, latents = stats["pc_means"][rows], stats["means"][rows]
    fresh, _ = pysave.shift.latent_shifts(stats, latents, source, target, [keys.index("batch")], positions=positions,
                                          neighbours=pysave.shift.SHIFT_NEIGHBOURS)
    solves = []
    emd = ot.emd
    monkeypatch.setattr(ot, "emd", lambda *a, **k: solves.append(1) or emd(*a, **k))
    transport = {}
    for call in range(3):
        again, pairs = pysave.shift.latent_shifts(stats, latents, source, target, [keys.index("batch")],
                                                  positions=positions, neighbours=pysave.shift.SHIFT_NEIGHBOURS,
                                                  transport=transport)
        np.testing.assert_array_equal(again, fresh)
        n_strata = pairs[0][2]
        assert n_strata >= 2 and len(solves) == n_strata  # each stratum solved on the first call only
    assert len(transport) == 1


def test_outputs_get_the_users_umask_not_private_modes(trained, tmp_path):
    """Atomic writes go through private temporary files (0600 / 0700); what lands must carry the
    mode a plain write would give, or the user's group cannot read a model on a shared cluster."""
    import stat

    import anndata as ad
    import torch

    model, adata = trained["model"], trained["adata"]
    old = os.umask(0o027)
    try:
        model.save(str(tmp_path / "model"))
        pysave.io.write_h5ad(ad.AnnData(np.ones((3, 2), dtype=np.float32)), str(tmp_path / "x.h5ad"))
        model.generate_to_h5ad(str(tmp_path / "g.h5ad"), adata.obs.iloc[:4])
        pysave.io.save_checkpoint(str(tmp_path / "ckpt"), {"w": torch.zeros(2)})
        pysave.evaluate(adata, model.generate_like(adata), groups=["cell_type"], out=str(tmp_path / "eval"), umap=False)
    finally:
        os.umask(old)
    modes = {os.path.relpath(os.path.join(root, n), tmp_path): stat.S_IMODE(os.stat(os.path.join(root, n)).st_mode)
             for root, dirs, files in os.walk(tmp_path) for n in dirs + files}
    assert {"model/weights.safetensors", "model/config.json", "x.h5ad", "g.h5ad", "eval/metrics.tsv", "eval/summary.json",
            "eval/metrics.png"} <= set(modes)
    for path, mode in modes.items():
        folder = os.path.isdir(tmp_path / path)
        assert mode == (0o750 if folder else 0o640), f"{path}: {oct(mode)}"


def test_string_dtype_obs_and_var_are_written_as_plain_strings(trained, tmp_path):
    """pandas 3 (or pandas 2 with future.infer_string) gives names the string dtype, which anndata
    refuses to write unless opted in and older readers (R's) cannot read: outputs turn it into
    plain strings, and the user's AnnData keeps its own dtypes. Seen on a GPU machine with pandas 3."""
    import anndata as ad

    model, adata = trained["model"], trained["adata"]
    names = pd.Index([f"c{i}" for i in range(3)], dtype=pd.StringDtype())
    x = ad.AnnData(np.ones((3, 2), dtype=np.float32), obs=pd.DataFrame({"label": pd.array(["a", "b", "a"], dtype="string")}, index=names),
                   var=pd.DataFrame(index=pd.Index(["g1", "g2"], dtype=pd.StringDtype())))
    pysave.io.write_h5ad(x, str(tmp_path / "x.h5ad"))
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert list(back.obs_names) == ["c0", "c1", "c2"] and list(back.obs["label"]) == ["a", "b", "a"]
    assert isinstance(x.obs.index.dtype, pd.StringDtype) and isinstance(x.obs["label"].dtype, pd.StringDtype)  # untouched
    table = adata.obs.iloc[:4].copy()
    table.index = pd.Index(table.index.astype(str), dtype=pd.StringDtype())
    model.generate_to_h5ad(str(tmp_path / "g.h5ad"), table)
    assert ad.read_h5ad(tmp_path / "g.h5ad").n_obs == 4


def test_count_sampling_gives_the_same_values_whatever_the_chunks_and_threads(monkeypatch):
    """sample_counts draws each run of COUNT_STREAM_ROWS cells from its own streams, keyed by
    (seed, 102 or 103, run), on several threads: the values must be those of drawing the runs one
    after the other in a single call, in both rate modes and with the NB's Gamma, whatever the
    number of threads, however the cells are cut into consecutive calls and however a thread cuts
    its run into blocks of rows (DRAW_BLOCK_VALUES, which bounds the draws' memory at many genes)."""

    def reference(lognorm, lib_mean, lib_sd, seed, theta=None, rates="fraction"):  # runs in order, one thread
        lib = np.exp(lib_mean + lib_sd * np.random.default_rng(1).standard_normal(len(lognorm)))
        if rates == "log_mean":
            rate = D.LogMeanInverter().rates(lognorm, lib)
        else:
            expr = np.expm1(np.asarray(lognorm, dtype=np.float64)).clip(min=0.0)
            total = expr.sum(1, keepdims=True)
            total[total <= 0] = 1.0
            rate = expr / total * lib[:, None]
        out = []
        for run, first in enumerate(range(0, len(lognorm), D.COUNT_STREAM_ROWS)):
            rows = slice(first, first + D.COUNT_STREAM_ROWS)
            out.append(D.draw_counts(rate[rows], np.random.default_rng([seed, 102, run]), theta,
                                     np.random.default_rng([seed, 103, run])))
        return np.concatenate(out)

    monkeypatch.setattr(D, "COUNT_STREAM_ROWS", 64)
    monkeypatch.setattr(D, "usable_cpus", lambda: 8)  # up to 8 threads, on a machine of any size
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    rng = np.random.default_rng(0)
    lognorm = (np.abs(rng.standard_normal((700, 120))) * (rng.random((700, 120)) < 0.4)).astype(np.float32)
    lib_mean, lib_sd = np.log(rng.uniform(500, 20_000, 700)), np.full(700, 0.3)
    theta = np.where(rng.random(120) < 0.5, rng.uniform(0.5, 20, 120), np.inf)
    for rates in ("fraction", "log_mean"):
        for th in (None, theta):
            expected = reference(lognorm, lib_mean, lib_sd, 9, th, rates)
            for chunk, workers, block_values in ((700, 1, 2 ** 20), (700, 4, 2 ** 20), (1, 2, 2 ** 20), (63, 3, 2 ** 20),
                                                 (64, 2, 2 ** 20), (100, 1, 2 ** 20), (300, 8, 2 ** 20),
                                                 (700, 1, 5 * 120), (700, 3, 1), (63, 2, 7 * 120)):
                monkeypatch.setattr(D, "SAMPLE_WORKERS", workers)
                monkeypatch.setattr(D, "DRAW_BLOCK_VALUES", block_values)  # whole runs; 5 rows; 1 row; 7 rows
                lib_rng, streams = np.random.default_rng(1), D.CountStreams(9)
                got = np.concatenate([D.sample_counts(lognorm[s:s + chunk], lib_mean[s:s + chunk], lib_sd[s:s + chunk],
                                                      lib_rng, streams, th, rates=rates)
                                      for s in range(0, 700, chunk)])
                assert np.array_equal(got, expected), (rates, th is not None, chunk, workers, block_values)
    # Another seed gives other counts; so does the next run of the same seed (the runs' streams differ).
    monkeypatch.setattr(D, "SAMPLE_WORKERS", 1)
    same = np.tile(lognorm[:1], (128, 1))
    one = D.sample_counts(same, np.full(128, 8.0), np.zeros(128), np.random.default_rng(1), D.CountStreams(9))
    other = D.sample_counts(same, np.full(128, 8.0), np.zeros(128), np.random.default_rng(1), D.CountStreams(10))
    assert not np.array_equal(one, other) and not np.array_equal(one[:64], one[64:])


def test_dense_blocks_are_bounded_by_values_and_change_nothing(trained, monkeypatch):
    """At atlas width a block of 4,096 cells held ~1 GB per dense float64 copy (30,000 genes), so
    generation's chunks, the expression-PC positions and the calibration's sums now take at most
    DENSE_BLOCK_VALUES values at a time. Bounded at 3 cells' values, with decoder blocks of 2: the
    same cells, positions and offsets as from whole blocks; generation's chunks are whole decoder
    blocks (2 cells), the positions' and the calibration's blocks 3 cells."""
    import pysave.model as M

    model = trained["model"]
    table = pd.DataFrame({"cell_type": ["B", "NK", "T_CD4"], "batch": ["10x_5prime", None, "10x_3prime_v1"], "n_cells": [4, 3, 4]})
    data = model._prepare(None)
    mu, _ = model._encode(data)
    n_combinations = len(model.condition_latents["codes"])

    cells = trained["adata"][:9].copy()

    def everything():
        _, positions = pysave.shift.expression_pcs(data, model.scalers, 0)
        offsets = model._combination_offsets(data, mu, n_combinations, 0)
        moved = [model.transfer(cells, {"batch": "10x_5prime"}, via="shift", output=kind, seed=2).X
                 for kind in ("sample", "input_plus_change")]
        return model.generate_like(table, seed=4, output="sample").X, positions, offsets, moved

    whole = everything()
    assert D.dense_block_rows(len(model.genes)) == D.CHUNK_ROWS  # 300 genes: whole blocks of 4,096 cells
    rows, solve = {"flow": [], "positions": [], "calibration": []}, M.sample_latents
    place, real, plus_change = pysave.shift.expression_positions, M.log_normalized_rows, M.SAVE._input_plus_change
    monkeypatch.setattr(M, "sample_latents", lambda flow, codes, *a, **k: rows["flow"].append(len(codes)) or solve(flow, codes, *a, **k))
    monkeypatch.setattr(pysave.shift, "expression_positions", lambda stats, x: rows["positions"].append(len(x)) or place(stats, x))
    monkeypatch.setattr(M, "log_normalized_rows", lambda src, sc, a, b: rows["calibration"].append(b - a) or real(src, sc, a, b))
    monkeypatch.setattr(M.SAVE, "_input_plus_change", lambda self, decoded, *a: rows.setdefault("transfer", []).append(len(decoded))
                        or plus_change(self, decoded, *a))
    monkeypatch.setattr(D, "DENSE_BLOCK_VALUES", 3 * len(model.genes))
    monkeypatch.setattr(M, "CPU_DECODE_ROWS", 2)
    assert D.dense_block_rows(len(model.genes)) == 3 and D.dense_block_rows(len(model.genes), 2) == 2
    bounded = everything()
    assert max(rows["flow"]) == 2 and sum(rows["flow"]) == 11
    assert max(rows["positions"]) == 3 and sum(rows["positions"]) == data.n_cells + 2 * cells.n_obs  # training's, and transfer's
    assert max(rows["calibration"]) == 3 and sum(rows["calibration"]) == int(model.condition_latents["offset_cells"].sum())
    assert np.array_equal(bounded[0], whole[0])
    np.testing.assert_allclose(bounded[1], whole[1], rtol=0, atol=1e-5)
    for key in ("offset_scores", "offset_basis", "offset_cells"):
        np.testing.assert_allclose(bounded[2][key], whole[2][key], rtol=0, atol=1e-5)
    assert rows["transfer"] == [2, 2, 2, 2, 1]  # transfer's chunks too: whole decoder blocks
    assert np.array_equal(bounded[3][0], whole[3][0])  # sampled: the same counts
    np.testing.assert_allclose(bounded[3][1], whole[3][1], rtol=0, atol=1e-5)  # decoded in blocks of 2, not 9: last bits


def test_count_draw_threads_follow_the_process_cpus(monkeypatch):
    """The draw threads are capped by the CPUs the process may use (a SLURM or taskset
    allocation on a large node), not by the machine's count."""
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: {0, 5, 9}, raising=False)
    monkeypatch.setattr(D.os, "cpu_count", lambda: 128)
    assert D.usable_cpus() == 3

    def no_affinity(pid):
        raise AttributeError

    monkeypatch.setattr(D.os, "sched_getaffinity", no_affinity, raising=False)
    assert D.usable_cpus() == 128


def test_count_draw_threads_follow_torch_threads(monkeypatch):
    """torch.set_num_threads bounds the draw threads too (a user sharing a node sets it once),
    and the counts are the same whatever the bound."""
    monkeypatch.setattr(D, "usable_cpus", lambda: 16)
    seen = []
    real_pool = D.ThreadPoolExecutor

    def pool(workers):
        seen.append(workers)
        return real_pool(workers)

    monkeypatch.setattr(D, "ThreadPoolExecutor", pool)
    rng = np.random.default_rng(0)
    lognorm = np.abs(rng.standard_normal((4 * D.COUNT_STREAM_ROWS, 30))).astype(np.float32)
    lib_mean, lib_sd = np.full(len(lognorm), 8.0), np.full(len(lognorm), 0.2)
    draws = {}
    with torch_threads_kept():
        for threads in (1, 3, 12):
            torch.set_num_threads(threads)
            assert D.draw_workers(100) == min(threads, D.SAMPLE_WORKERS)
            draws[threads] = D.sample_counts(lognorm, lib_mean, lib_sd, np.random.default_rng(1), D.CountStreams(5))
    assert seen == [3, 4]  # one thread draws without a pool; 12 threads meet the call's 4 runs
    assert np.array_equal(draws[1], draws[3]) and np.array_equal(draws[1], draws[12])
