"""Batch-correction (scIB) and perturbation (scGen) protocols, and `pysave evaluate --task ...`."""
import json
import os
import sys
from unittest import mock

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from pysave import metrics as M
from pysave.cli import main
from pysave.errors import PySaveError
from support import shared_file


@pytest.fixture(scope="module")
def kang():
    a = ad.read_h5ad(shared_file("kang2018_scgen_valid_pbmc_1975.h5ad"))
    keep = a.obs["cell_type"].isin(["B", "NK", "CD4T"]).to_numpy()
    genes = np.argsort(-np.asarray(a.X.sum(0)).ravel())[:1500]
    return a[keep][:, np.sort(genes)].copy()


def _halves(a, seed=0):
    stim = np.flatnonzero(a.obs["condition"].astype(str).to_numpy() == "stimulated")
    stim = np.random.default_rng(seed).permutation(stim)
    mask = np.zeros(a.n_obs, dtype=bool)
    mask[stim[: len(stim) // 2]] = True
    return a[~mask].copy(), a[mask].copy()  # real (control + half the stimulated), "predicted" (the other half)


def test_perturbation_evaluation_scores_real_cells_near_the_floor_and_control_as_control(kang):
    real, pred = _halves(kang)
    good = M.perturbation_evaluation(real, pred, "condition", "control", "stimulated", "cell_type", n_degs=50)
    table = good["per_group"]
    assert list(table.index) == ["B", "CD4T", "NK"]
    assert (table["degs_r2"] > table["control_degs_r2"] + 0.2).all()
    assert (table["all_r2"] > 0.8).all() and (table["degs_r2"] > 0.8).all()
    assert np.allclose(table["degs_r2"], table["degs_pearson_r"] ** 2)
    assert {"all_r2_score", "degs_r2_score", "floor_degs_r2", "n_predicted"} <= set(table.columns)
    assert good["protocol"]["name"] == "perturbation_scgen" and good["protocol"]["n_degs"] == 50
    # Predicting "no change" (the control cells) reproduces the control baseline exactly.
    ctrl = real[real.obs["condition"].astype(str) == "control"].copy()
    lazy = M.perturbation_evaluation(real, ctrl, "condition", "control", "stimulated", "cell_type", n_degs=50)["per_group"]
    np.testing.assert_allclose(lazy["degs_r2"], lazy["control_degs_r2"])
    assert (lazy["degs_r2"] < table["degs_r2"]).all()


def test_perturbation_evaluation_errors(kang):
    real, pred = _halves(kang)
    with pytest.raises(PySaveError, match="no real cells"):
        M.perturbation_evaluation(real, pred, "condition", "control", "IFN", "cell_type")
    with pytest.raises(PySaveError, match="not a column"):
        M.perturbation_evaluation(real, pred, "stim", "control", "stimulated", "cell_type")


def test_batch_correction_without_scib_metrics_says_how_to_install(monkeypatch, pbmc_full):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)  # import fails as if not installed
    a = pbmc_full[:100].copy()
    a.obsm["X_x"] = np.zeros((100, 2))
    with pytest.raises(PySaveError, match=r'pip install "pysave\[eval\]"'):
        M.batch_correction(a, "batch", "cell_type", ["X_x"])
    result = CliRunner().invoke(main, ["evaluate", "x.h5ad", "--task", "batch", "--out", "o"])
    assert result.exit_code != 0 and "--batch-key" in result.output


def test_batch_correction_input_errors(pbmc_full):
    a = pbmc_full[:100].copy()
    a.obsm["X_x"] = np.zeros((100, 2))
    with pytest.raises(PySaveError, match="not in obsm"):
        M.batch_correction(a, "batch", "cell_type", ["X_missing"])
    with pytest.raises(PySaveError, match="not a column"):
        M.batch_correction(a, "donor", "cell_type", ["X_x"])
    with pytest.raises(PySaveError, match="unknown scIB metric"):
        M.batch_correction(a, "batch", "cell_type", ["X_x"], batch_metrics=("silhouette_batch",))


def _embeddings(pbmc_full):
    rng = np.random.default_rng(0)
    a = pbmc_full[rng.choice(pbmc_full.n_obs, 500, replace=False)].copy()
    labels = pd.get_dummies(a.obs["cell_type"].astype(str)).to_numpy(float)
    batches = pd.get_dummies(a.obs["batch"].astype(str)).to_numpy(float)
    a.obsm["X_ideal"] = np.hstack([labels * 5, rng.normal(size=(a.n_obs, 5))])  # labels only
    a.obsm["X_batchy"] = np.hstack([batches * 5, rng.normal(size=(a.n_obs, 5))])  # batches only
    return a


def _require_scib():
    """CI installs the eval extra, so there a missing scib-metrics fails instead of skipping."""
    if os.environ.get("PYSAVE_REQUIRE_EVAL"):
        import scib_metrics  # noqa: F401
    else:
        pytest.importorskip("scib_metrics")


def test_batch_correction_scib(pbmc_full):
    _require_scib()
    a = _embeddings(pbmc_full)
    np.random.seed(123)
    user_stream = np.random.get_state()[1].copy()
    result = M.batch_correction(a, "batch", "cell_type", ["X_ideal", "X_batchy"])
    # The user's global numpy stream is left where it was (scoring seeds it only for itself).
    np.testing.assert_array_equal(np.random.get_state()[1], user_stream)
    table = result["table"]
    again = M.batch_correction(a, "batch", "cell_type", ["X_ideal", "X_batchy"])["table"]
    pd.testing.assert_frame_equal(table, again)
    assert table.loc["X_ideal", "Bio conservation"] > table.loc["X_batchy", "Bio conservation"]
    assert table.loc["X_ideal", "Batch correction"] > table.loc["X_batchy", "Batch correction"]
    np.testing.assert_allclose(table["Total"], 0.6 * table["Bio conservation"] + 0.4 * table["Batch correction"])
    protocol = result["protocol"]
    assert protocol["scib_metrics_version"] == M.SCIB_METRICS_VERSION and protocol["min_max_scale"] is False
    assert len(protocol["bio_metrics"]) >= 4 and len(protocol["batch_metrics"]) == 5


def test_batch_correction_scores_do_not_depend_on_earlier_arpack_calls(pbmc_full):
    """kBET's diffusion embedding starts ARPACK from a vector drawn from the seed, not from
    ARPACK's own generator, which every earlier call advances (two copies of the PCA once
    scored kBET 0.114 and 0.226 on one label of this data)."""
    _require_scib()
    import scipy.sparse.linalg as sla
    from scib_metrics.utils._diffusion_nn import _compute_eigen

    # The premise: a degenerate spectrum (two identical blocks), whose eigenvectors ARPACK
    # picks by its start vector, changes between two plain calls and not under the seeded start.
    block = sp.random(60, 60, density=0.2, random_state=0)
    m = sp.block_diag([block + block.T] * 2).tocsr()
    first, second = (_compute_eigen(m, n_comps=4)[1] for _ in range(2))
    assert not np.allclose(np.abs(first), np.abs(second), atol=1e-3)
    with M._seeded_arpack(0):
        first, second = (_compute_eigen(m, n_comps=4)[1] for _ in range(2))
    np.testing.assert_array_equal(first, second)

    # Every eigsh call scib-metrics makes while scoring gets that seeded start.
    a = _embeddings(pbmc_full)
    with mock.patch.object(sla, "eigsh", wraps=sla.eigsh) as spy:
        M.batch_correction(a, "batch", "cell_type", ["X_ideal"], seed=3)
    assert spy.call_count > 0
    for call in spy.call_args_list:
        n = call.args[0].shape[0]
        np.testing.assert_array_equal(call.kwargs["v0"], np.random.default_rng(3).uniform(-1, 1, n))


# The bare get_num_threads() starts torch's thread pool before numba starts; without it the
# defect does not show (measured: 1 thread after the UMAP either way without the fix).
THREADS_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
torch.get_num_threads()
from pysave import datasets, metrics, plotting
a = datasets.pbmc_3tech()[:300].copy()
a.obsm["emb"] = np.random.default_rng(0).normal(size=(a.n_obs, 5)).astype(np.float32)
if sys.argv[1] == "scib":
    metrics.batch_correction(a, "batch", "cell_type", ["emb"])
else:
    plotting.embedding_umaps(a, ["emb"], "batch", "cell_type", sys.argv[2])
print("torch threads", torch.get_num_threads())
"""


@pytest.mark.parametrize("scoring", ["scib", "umap"])
def test_scoring_leaves_torch_threads_as_they_were(scoring, tmp_path):
    """numba's OpenMP layer, first started by pynndescent (scIB's neighbours, scanpy's UMAP), set
    torch's thread count to every core: a session at 1 thread then trained on 2 (other weights,
    and 8x slower beside a busy process). A fresh process, since numba starts once."""
    if scoring == "scib":
        _require_scib()
    import subprocess

    out = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, scoring, str(tmp_path / "u.png")], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch threads 1" in out.stdout, out.stdout


def test_evaluate_batch_command(pbmc_full, tmp_path):
    _require_scib()
    a = _embeddings(pbmc_full)
    a.write_h5ad(tmp_path / "d.h5ad")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "d.h5ad"), "--task", "batch", "--batch-key", "batch",
                                       "--label-key", "cell_type", "--embedding", "X_ideal", "--embedding", "X_batchy",
                                       "--out", str(tmp_path / "e"), "--no-umap"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "e" / "metrics.tsv", sep="\t", index_col=0)
    assert table.loc["X_ideal", "Total"] > table.loc["X_batchy", "Total"]
    summary = json.load(open(tmp_path / "e" / "summary.json"))
    assert summary["task"] == "batch" and summary["protocol"]["name"] == "batch_correction_scib"
    assert (tmp_path / "e" / "scores.png").exists()
    assert "Total[X_ideal]=" in result.output and "Batch correction" in result.output  # the whole table and its means


def test_evaluate_perturbation_command(kang, tmp_path):
    real, pred = _halves(kang)
    real.write_h5ad(tmp_path / "real.h5ad")
    pred.write_h5ad(tmp_path / "pred.h5ad")
    out = tmp_path / "p"
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "real.h5ad"), str(tmp_path / "pred.h5ad"), "--task",
                                       "perturbation", "--condition-key", "condition", "--n-degs", "30", "--seed", "3",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "metrics.tsv", sep="\t", index_col=0)
    assert set(table.index) == {"B", "CD4T", "NK"} and (table["degs_r2"] > table["control_degs_r2"]).all()
    summary = json.load(open(out / "summary.json"))
    assert summary["protocol"]["name"] == "perturbation_scgen" and summary["protocol"]["seed"] == 3
    assert summary["protocol"]["n_degs"] == 30 and len(summary["degs"]["B"]) == 30
    for f in ("scores.png", "means.png", "umap.png"):
        assert (out / f).exists()
    # Wrong number of inputs for the task: one clear line.
    bad = CliRunner().invoke(main, ["evaluate", str(tmp_path / "real.h5ad"), "--task", "perturbation", "--out", str(tmp_path / "q")])
    assert bad.exit_code == 1 and "needs GENERATED (a second file)" in bad.output


def test_perturbation_skips_a_type_too_small_for_the_floor_halves(pbmc_full):
    # 3 real stimulated cells cannot be halved into two groups of >= 2 for the floor's DE test:
    # that type is left out (it used to crash inside scanpy), the others are scored.
    a = pbmc_full.copy()
    batch = a.obs["batch"].astype(str).to_numpy()
    a.obs["condition"] = np.where(batch == "10x_3prime_v2", "control", np.where(batch == "10x_5prime", "stimulated", "other"))
    real = a[a.obs["condition"] != "other"].copy()
    stim_b = np.flatnonzero((real.obs["condition"] == "stimulated").to_numpy() & (real.obs["cell_type"] == "B").to_numpy())
    real = real[~np.isin(np.arange(real.n_obs), stim_b[3:])].copy()
    predicted = real[(real.obs["condition"] == "stimulated").to_numpy()].copy()
    result = M.perturbation_evaluation(real, predicted, "condition", "control", "stimulated", cell_type_key="cell_type", n_degs=20)
    assert "B" not in result["per_group"].index and len(result["per_group"]) >= 5


def _strict_json(path):
    """Parse as strict JSON: a bare NaN / Infinity (which Python writes, and jsonlite, jq and
    browsers reject) fails the test."""
    def refuse(word):
        raise AssertionError(f"{path} holds {word}, which is not JSON")
    return json.loads(open(path).read(), parse_constant=refuse)


def test_summary_json_is_strict_json_when_a_mean_is_not_computed(kang, tmp_path):
    # Every group under pysave.metrics.MIN_SPREAD_CELLS cells: no group has a spread, so its
    # mean is NaN in Python and must be null in summary.json (saveR's jsonlite rejects NaN).
    import pysave

    few = kang[kang.obs.groupby("cell_type", observed=True).cumcount().to_numpy() < 6].copy()
    table, summary, _ = pysave.evaluate(kang, few, groups=["cell_type"], n_hvg=200, umap=False, out=str(tmp_path / "e"))
    assert table["spread"].isna().all() and np.isnan(summary["mean"]["spread"])
    written = _strict_json(tmp_path / "e" / "summary.json")
    assert written["mean"]["spread"] is None
    assert written["mean"]["W1"] == pytest.approx(summary["mean"]["W1"])
