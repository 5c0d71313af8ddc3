"""End to end on real data from ../shared/data: train, generate an unseen (batch, cell type)
combination, transfer, save, reload, and check that reloaded outputs are identical."""
import anndata as ad
import numpy as np
import scanpy as sc
from click.testing import CliRunner

from support import shared_file
from pysave.cli import main

HELD_OUT = ("10x_5prime", "B")


def test_unseen_combination_end_to_end(tmp_path):
    path = shared_file("pbmc_3tech_symphony_1200.h5ad")
    adata = ad.read_h5ad(path)
    held = (adata.obs["batch"] == HELD_OUT[0]) & (adata.obs["cell_type"] == HELD_OUT[1])
    train = adata[~held.to_numpy()].copy()
    train.write_h5ad(tmp_path / "train.h5ad")
    runner = CliRunner()
    model_dir = tmp_path / "model"
    args = ["train", str(tmp_path / "train.h5ad"), "--condition", "batch", "--condition", "cell_type",
            "--batch-key", "batch", "--out", str(model_dir), "--epochs", "40", "--flow-epochs", "800",
            "--lr", "1e-3", "--hidden-size", "64", "--condition-dim", "64", "--encoder-layers", "1",
            "--decoder-layers", "1", "--n-blocks", "16", "--quiet"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output

    for i in range(2):  # the second run is from the reloaded model directory again: identical
        out = tmp_path / f"gen{i}.h5ad"
        r = runner.invoke(main, ["generate", str(model_dir), "--n", "100", "--set", f"batch={HELD_OUT[0]}",
                                 "--set", f"cell_type={HELD_OUT[1]}", "--seed", "7", "--out", str(out), "--quiet"])
        assert r.exit_code == 0, r.output
    g0, g1 = ad.read_h5ad(tmp_path / "gen0.h5ad"), ad.read_h5ad(tmp_path / "gen1.h5ad")
    assert np.array_equal(g0.X, g1.X)

    # The unseen combination looks like B cells: closer to the held-out real B cells than to
    # any other real cell type of that batch (per-gene means, log-normalized).
    real = adata.copy()
    sc.pp.normalize_total(real, target_sum=1e4)
    sc.pp.log1p(real)
    X = np.asarray(real.X.todense())
    fake_mean = g0.X.mean(0)
    dist = {}
    for ct in real.obs["cell_type"].unique():
        sel = ((real.obs["cell_type"] == ct) & (real.obs["batch"] == HELD_OUT[0])).to_numpy()
        if sel.sum() >= 10:
            dist[ct] = float(np.linalg.norm(X[sel].mean(0) - fake_mean))
    assert min(dist, key=dist.get) == HELD_OUT[1], dist

    # Transfer the held-out B cells' 3' v2 siblings to 5': also closest to real 5' B cells.
    v2_b = tmp_path / "v2_b.h5ad"
    adata[((adata.obs["batch"] == "10x_3prime_v2") & (adata.obs["cell_type"] == "B")).to_numpy()].copy().write_h5ad(v2_b)
    moved = tmp_path / "moved.h5ad"
    r = runner.invoke(main, ["transfer", str(model_dir), str(v2_b), "--set", f"batch={HELD_OUT[0]}", "--out", str(moved), "--quiet"])
    assert r.exit_code == 0, r.output
    t = ad.read_h5ad(moved)
    assert (t.obs["batch"] == HELD_OUT[0]).all() and (t.obs["batch_source"] == "10x_3prime_v2").all()
    assert np.isfinite(t.X).all()
