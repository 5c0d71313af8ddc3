"""R's ``.rds`` files: read a SingleCellExperiment or Seurat (v4) object as AnnData, write AnnData
as a SingleCellExperiment. Runs R in-process through rpy2 (3.5.17) and anndata2ri (2.0.1).

rpy2 is imported only when an ``.rds`` file is used, so pysave works without R. Needs R with the
SingleCellExperiment package (and SeuratObject for Seurat files) and ``pip install 'pysave[r]'``.

Mapping (anndata2ri's): SCE assays -> ``X`` (the "counts" assay when there is one, else the first
assay) and ``layers`` (the others); ``colData`` -> ``obs`` (factors become categoricals with their
levels); ``reducedDims`` -> ``obsm`` (``PCA`` -> ``X_pca``). A Seurat object's default assay gives
``X`` = counts and ``layers["logcounts"]`` = its normalized data, its meta.data gives ``obs`` and
its reductions give ``obsm``. Sparse matrices stay sparse both ways. Writing: ``X`` becomes the
assay "counts" when it holds integer counts, else "logcounts".
"""
from __future__ import annotations

import os

import numpy as np

from .data import REGISTRY_KEY
from .errors import PySaveError

_R_INSTALL = ("install R and its packages (Debian: apt-get install r-base-core r-bioc-singlecellexperiment "
              "r-cran-seuratobject) and the Python bridge (pip install 'pysave[r]', i.e. rpy2==3.5.17 anndata2ri==2.0.1)")

_R_READ = r"""
function(path) suppressPackageStartupMessages({
  obj <- readRDS(path)
  need <- function(pkg) if (!requireNamespace(pkg, quietly = TRUE))
    stop(sprintf("the R package '%s' is needed to read this file; install it", pkg), call. = FALSE)
  need("SingleCellExperiment")
  if (inherits(obj, "Seurat")) {
    need("SeuratObject")
    assay <- SeuratObject::DefaultAssay(obj)
    counts <- SeuratObject::GetAssayData(obj, slot = "counts", assay = assay)
    data <- SeuratObject::GetAssayData(obj, slot = "data", assay = assay)
    assays <- list()
    if (all(dim(counts) > 0)) assays$counts <- counts
    if (all(dim(data) > 0) && (!length(assays) || !identical(data, counts))) assays$logcounts <- data
    if (!length(assays)) stop("the Seurat object has neither counts nor data in its default assay", call. = FALSE)
    cells <- colnames(assays[[1]])
    reds <- list()
    for (r in SeuratObject::Reductions(obj)) {
      emb <- SeuratObject::Embeddings(obj, reduction = r)
      if (identical(rownames(emb), cells)) reds[[toupper(r)]] <- emb
    }
    meta <- obj@meta.data[cells, , drop = FALSE]
    return(SingleCellExperiment::SingleCellExperiment(assays = assays,
      colData = S4Vectors::DataFrame(meta, check.names = FALSE), reducedDims = reds))
  }
  if (!methods::is(obj, "SingleCellExperiment")) {
    if (methods::is(obj, "SummarizedExperiment")) obj <- methods::as(obj, "SingleCellExperiment")
    else stop(sprintf("it holds an object of class '%s', not a SingleCellExperiment or Seurat object",
                      paste(class(obj), collapse = "/")), call. = FALSE)
  }
  an <- SummarizedExperiment::assayNames(obj)
  if (!length(an)) stop("the SingleCellExperiment has no assays", call. = FALSE)
  if ("counts" %in% an) SummarizedExperiment::assays(obj) <- SummarizedExperiment::assays(obj)[c("counts", setdiff(an, "counts"))]
  SummarizedExperiment::rowData(obj) <- NULL
  obj
})
"""

_R_WRITE = r"""
function(sce, x_name, path) {
  names(SummarizedExperiment::assays(sce))[1] <- x_name
  saveRDS(sce, path)
  invisible(path)
}
"""


def _bridge():
    try:
        import anndata2ri
        import rpy2.robjects as ro
    except ImportError as err:
        raise PySaveError(f".rds files need R and rpy2 ({err}); {_R_INSTALL}.") from err
    except Exception as err:  # noqa: BLE001 - rpy2 raises various errors when R itself is missing or broken
        raise PySaveError(f"could not start R through rpy2 ({type(err).__name__}: {err}); {_R_INSTALL}.") from err
    return ro, anndata2ri


def _r_error(err: Exception) -> str:
    text = str(err).strip()
    text = text.split("\n")[-1] if text else type(err).__name__
    return text[len("Error: "):] if text.startswith("Error: ") else text


def read_rds(path: str):
    """Read an ``.rds`` file holding a SingleCellExperiment or Seurat v4 object into an AnnData."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PySaveError(f"input file {path!r} does not exist; check the path.")
    if os.path.isdir(path):
        raise PySaveError(f"{path!r} is a folder, not an .rds file.")
    ro, anndata2ri = _bridge()
    from rpy2.rinterface_lib.embedded import RRuntimeError

    with (ro.default_converter + anndata2ri.converter).context():
        reader = ro.r(_R_READ)
        try:
            adata = reader(os.path.abspath(path))
        except RRuntimeError as err:
            raise PySaveError(f"could not read {path!r} as a SingleCellExperiment or Seurat object: {_r_error(err)}.") from err
    if not hasattr(adata, "obs_names"):
        raise PySaveError(f"{path!r} did not convert to AnnData (got {type(adata).__name__}).")
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    for key in list(adata.obs.columns):  # anndata2ri gives nullable Int32 for R integers: keep plain ints when complete
        col = adata.obs[key]
        if str(col.dtype) == "Int32" and not col.isna().any():
            adata.obs[key] = col.to_numpy(dtype=np.int32)
    return adata


def write_rds(adata, path: str, overwrite: bool = False, inputs: tuple[str, ...] = ()) -> str:
    """Write ``adata`` as an ``.rds`` SingleCellExperiment (atomically: temporary file, then rename)."""
    import scipy.sparse as sp

    from .io import atomic_output, check_output_path

    path = check_output_path(path, overwrite, inputs)
    ro, anndata2ri = _bridge()
    from rpy2.rinterface_lib.embedded import RRuntimeError

    X = adata.X
    data = X.data if sp.issparse(X) else np.asarray(X)
    x_name = "counts" if data.size == 0 or bool(np.all(data == np.round(data))) else "logcounts"
    out = adata.copy()
    out.uns = {k: v for k, v in out.uns.items() if k != REGISTRY_KEY}  # registry JSON is pysave-internal
    if sp.issparse(out.X):
        out.X = sp.csr_matrix(out.X, dtype=np.float64)
    try:
        with atomic_output(path) as tmp, (ro.default_converter + anndata2ri.converter).context():
            sce = ro.conversion.get_conversion().py2rpy(out)
            ro.r(_R_WRITE)(sce, x_name, tmp)
    except RRuntimeError as err:
        raise PySaveError(f"could not write {path!r} as an .rds SingleCellExperiment: {_r_error(err)}.") from err
    return path
