"""R's .rds files through rpy2 + anndata2ri: Seurat v4 and SingleCellExperiment in, SCE out, CLI."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from pysave.errors import PySaveError
from pysave.io import read_anndata, read_h5ad

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared-tests")
TINY_H5AD = os.path.join(SHARED, "fixtures", "pbmc_tiny.h5ad")
TINY_MODEL = os.path.join(SHARED, "fixtures", "tiny_model")


def _need_r():
    """R + rpy2 are required in CI (PYSAVE_REQUIRE_R=1, set by scripts/test.sh when R is installed)."""
    try:
        import anndata2ri  # noqa: F401
        import rpy2.robjects as ro

        ro.r("1")
        ok = bool(ro.r('requireNamespace("SingleCellExperiment", quietly = TRUE) && requireNamespace("SeuratObject", quietly = TRUE)')[0])
    except Exception as err:  # noqa: BLE001
        ok, why = False, f"{type(err).__name__}: {err}"
    else:
        why = "R packages SingleCellExperiment / SeuratObject are missing"
    if not ok:
        if os.environ.get("PYSAVE_REQUIRE_R"):
            pytest.fail(f"R bridge unavailable but PYSAVE_REQUIRE_R is set ({why})")
        pytest.skip(f"R bridge unavailable ({why}); install R and pip install 'pysave[r]'")
    return ro


@pytest.fixture(scope="module")
def rds_files(tmp_path_factory):
    ro = _need_r()
    folder = tmp_path_factory.mktemp("rds")
    seurat, sce, frame = (str(folder / n) for n in ("pbmc_small_seurat.rds", "pbmc_small_sce.rds", "frame.rds"))
    ro.r(f"""suppressPackageStartupMessages({{
      e <- new.env(); utils::data("pbmc_small", package = "SeuratObject", envir = e); s <- e$pbmc_small
      saveRDS(s, "{seurat}")
      sce <- SingleCellExperiment::SingleCellExperiment(
        list(logcounts = SeuratObject::GetAssayData(s, slot = "data"), counts = SeuratObject::GetAssayData(s, slot = "counts")),
        colData = S4Vectors::DataFrame(s@meta.data, check.names = FALSE),
        reducedDims = list(PCA = SeuratObject::Embeddings(s, "pca")))
      saveRDS(sce, "{sce}")
      saveRDS(data.frame(a = 1:3), "{frame}")
      m <- SeuratObject::GetAssayData(s, slot = "counts")
      writeLines(c(paste(dim(m), collapse = " "), sum(m), length(m@x), paste(levels(s$RNA_snn_res.1), collapse = ",")),
                 "{folder}/truth.txt")
    }})""")
    truth = open(folder / "truth.txt").read().split("\n")
    return {"seurat": seurat, "sce": sce, "frame": frame, "folder": folder,
            "dims": tuple(int(v) for v in truth[0].split()), "total": float(truth[1]), "nnz": int(truth[2]),
            "levels": truth[3].split(",")}


def test_reads_seurat_v4_rds(rds_files):
    adata = read_anndata(rds_files["seurat"])
    n_genes, n_cells = rds_files["dims"]
    assert adata.shape == (n_cells, n_genes)
    assert sp.issparse(adata.X)  # not densified
    assert adata.X.nnz == rds_files["nnz"] and float(adata.X.sum()) == rds_files["total"]
    assert "logcounts" in adata.layers  # the normalized data slot
    assert adata.obs["RNA_snn_res.1"].cat.categories.tolist() == rds_files["levels"]  # factor levels kept
    assert adata.obs["nFeature_RNA"].dtype == np.int32
    assert "X_pca" in adata.obsm and adata.obsm["X_pca"].shape[0] == n_cells


def test_reads_sce_rds_with_counts_as_x(rds_files):
    adata = read_anndata(rds_files["sce"])
    # counts became X although it was the second assay; the other assay is a layer
    assert float(adata.X.sum()) == rds_files["total"]
    assert list(adata.layers) == ["logcounts"]
    assert adata.obs["groups"].tolist()[:2] == read_anndata(rds_files["seurat"]).obs["groups"].tolist()[:2]


def test_write_rds_round_trip_is_exact(rds_files):
    from pysave.rds import write_rds

    tiny = read_h5ad(TINY_H5AD)
    path = str(rds_files["folder"] / "tiny.rds")
    write_rds(tiny, path)
    back = read_anndata(path)
    assert back.obs_names.tolist() == tiny.obs_names.tolist()
    assert back.var_names.tolist() == tiny.var_names.tolist()
    assert (back.X != tiny.X).nnz == 0
    for key in ("batch", "cell_type"):
        assert back.obs[key].cat.categories.tolist() == tiny.obs[key].cat.categories.tolist()
        assert back.obs[key].tolist() == tiny.obs[key].tolist()
    assert back.obs["n_counts"].tolist() == tiny.obs["n_counts"].tolist()
    with pytest.raises(PySaveError, match="already exists"):
        write_rds(tiny, path)


def test_generated_cells_write_as_logcounts(rds_files):
    import pysave
    from pysave.rds import write_rds

    _need_r()
    model = pysave.SAVE.load(TINY_MODEL, device="cpu", verbose=False)
    gen = model.generate({"cell_type": "B"}, n_cells=4)
    path = str(rds_files["folder"] / "gen.rds")
    write_rds(gen, path)
    import rpy2.robjects as ro

    assert list(ro.r(f'SummarizedExperiment::assayNames(readRDS("{path}"))')) == ["logcounts"]
    back = read_anndata(path)
    np.testing.assert_allclose(np.asarray(back.X), gen.X, rtol=0, atol=1e-6)
    assert back.obs["cell_type"].tolist() == ["B"] * 4


def test_bad_rds_inputs_say_what_is_wrong(rds_files):
    with pytest.raises(PySaveError, match="not a SingleCellExperiment or Seurat"):
        read_anndata(rds_files["frame"])
    with pytest.raises(PySaveError, match="does not exist"):
        read_anndata(str(rds_files["folder"] / "missing.rds"))


def test_cli_accepts_rds_wherever_h5ad(rds_files, tmp_path):
    from click.testing import CliRunner

    from pysave.cli import main
    from pysave.rds import write_rds

    data = str(tmp_path / "tiny.rds")
    write_rds(read_h5ad(TINY_H5AD), data)
    out = str(tmp_path / "embedded.h5ad")
    result = CliRunner().invoke(main, ["embed", TINY_MODEL, data, "--out", out, "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    embedded = read_h5ad(out)
    assert embedded.obsm["X_save"].shape == (60, 16)
    result = CliRunner().invoke(main, ["transfer", TINY_MODEL, data, "--set", "batch=10x_5prime",
                                       "--out", str(tmp_path / "moved.h5ad"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(main, ["embed", TINY_MODEL, rds_files["frame"], "--out", str(tmp_path / "x.h5ad")])
    assert bad.exit_code == 1 and "not a SingleCellExperiment or Seurat" in bad.output


def test_rds_without_rpy2_is_a_clear_error(monkeypatch, tmp_path):
    from pysave import rds

    monkeypatch.setitem(sys.modules, "rpy2", None)
    monkeypatch.setitem(sys.modules, "rpy2.robjects", None)
    path = tmp_path / "x.rds"
    path.write_bytes(b"not really")
    with pytest.raises(PySaveError, match=r"pysave\[r\]"):
        rds.read_rds(str(path))


def test_h5ad_still_read_without_touching_r():
    before = "rpy2" in sys.modules
    adata = read_anndata(TINY_H5AD)
    assert adata.shape == (60, 40)
    assert ("rpy2" in sys.modules) == before
