# Seurat v4 / SingleCellExperiment <-> AnnData, without densifying counts.
# R -> Python: matrices go as their sparse parts (i, p, x) and are rebuilt as scipy CSR in Python;
# Python -> R: saver_bridge returns plain numpy arrays that are rebuilt here with sparseMatrix()
# (reticulate 1.28 cannot convert scipy sparse matrices to dgCMatrix by itself).

.is_seurat <- function(x) inherits(x, "Seurat")
.is_sce <- function(x) inherits(x, "SingleCellExperiment")

.need <- function(pkg, why) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    stop(sprintf("saveR: package '%s' is needed %s; install it (Debian: apt-get install r-cran-%s / r-bioc-%s).",
                 pkg, why, tolower(pkg), tolower(pkg)), call. = FALSE)
  }
}

.check_object <- function(object, fun) {
  if (!.is_seurat(object) && !.is_sce(object)) {
    stop(sprintf("%s needs a Seurat (v4) or SingleCellExperiment object, got an object of class '%s'. ",
                 fun, paste(class(object), collapse = "/")),
         "Convert it first, e.g. SeuratObject::CreateSeuratObject(counts) or ",
         "SingleCellExperiment::SingleCellExperiment(list(counts = counts)).", call. = FALSE)
  }
  if (.is_seurat(object)) .need("SeuratObject", "for Seurat objects")
  if (.is_sce(object)) .need("SingleCellExperiment", "for SingleCellExperiment objects")
  invisible(object)
}

# ---------------------------------------------------------------------------- matrices
.as_sparse <- function(m) {
  if (inherits(m, "dgCMatrix")) return(m)
  if (is.matrix(m)) storage.mode(m) <- "double"
  methods::as(methods::as(methods::as(m, "CsparseMatrix"), "generalMatrix"), "dMatrix")
}

# genes x cells matrix -> list of parts for saver_bridge.matrix_from_r
.matrix_parts <- function(m) {
  if (is.matrix(m) && !is.numeric(m)) stop("saveR: expression matrices must be numeric.", call. = FALSE)
  if (is.matrix(m)) {
    return(list(kind = "dense", x = as.double(m), dims = as.integer(dim(m))))
  }
  m <- .as_sparse(m)
  list(kind = "sparse", i = as.integer(m@i), p = as.integer(m@p), x = as.double(m@x), dims = as.integer(dim(m)))
}

# parts from saver_bridge.matrix_to_r -> genes x cells R matrix (dgCMatrix or dense)
.matrix_from_parts <- function(parts, genes, cells) {
  dims <- as.integer(unlist(parts$dims))
  if (identical(parts$kind, "sparse")) {
    m <- Matrix::sparseMatrix(i = as.integer(parts$i), p = as.integer(parts$p), x = as.numeric(parts$x),
                              dims = dims, index1 = FALSE, repr = "C", dimnames = list(genes, cells))
    return(m)
  }
  m <- matrix(as.numeric(parts$x), nrow = dims[1], ncol = dims[2], dimnames = list(genes, cells))
  m
}

# ---------------------------------------------------------------------------- cell metadata
.column_parts <- function(x) {
  na <- is.na(x)
  if (is.factor(x)) {
    codes <- as.integer(x)
    codes[na] <- 0L
    return(list(kind = "factor", codes = codes, na = na, levels = as.character(levels(x)), ordered = is.ordered(x)))
  }
  if (is.logical(x)) { v <- x; v[na] <- FALSE; return(list(kind = "logical", values = v, na = na)) }
  if (is.integer(x)) { v <- as.double(x); v[na] <- 0; return(list(kind = "integer", values = v, na = na)) }
  if (is.numeric(x)) { v <- as.double(x); v[na] <- 0; return(list(kind = "double", values = v, na = na)) }
  v <- as.character(x); v[na] <- ""
  list(kind = "character", values = v, na = na)
}

.columns_parts <- function(df) {
  out <- lapply(names(df), function(nm) .column_parts(df[[nm]]))
  names(out) <- names(df)
  out
}

.column_from_parts <- function(p) {
  na <- as.logical(unlist(p$na))
  switch(p$kind,
    factor = {
      codes <- as.integer(unlist(p$codes))
      codes[na] <- NA_integer_
      lev <- as.character(unlist(p$levels))
      factor(lev[codes], levels = lev, ordered = isTRUE(as.logical(p$ordered)))
    },
    logical = { v <- as.logical(unlist(p$values)); v[na] <- NA; v },
    integer = { v <- as.integer(unlist(p$values)); v[na] <- NA_integer_; v },
    double = { v <- as.double(unlist(p$values)); v[na] <- NA_real_; v },
    { v <- as.character(unlist(p$values)); v[na] <- NA_character_; v })
}

.frame_from_parts <- function(parts, rownames = NULL) {
  n <- length(rownames)
  cols <- lapply(parts, .column_from_parts)
  df <- if (length(cols)) as.data.frame(cols, stringsAsFactors = FALSE, optional = TRUE) else data.frame(row.names = seq_len(n))[, 0, drop = FALSE]
  names(df) <- names(parts)
  if (!is.null(rownames)) rownames(df) <- rownames
  df
}

# ---------------------------------------------------------------------------- objects -> AnnData parts
.seurat_assay <- function(object, assay) {
  if (is.null(assay)) assay <- SeuratObject::DefaultAssay(object)
  if (!assay %in% SeuratObject::Assays(object)) {
    stop(sprintf("assay '%s' is not in the Seurat object; its assays are: %s.", assay,
                 paste(SeuratObject::Assays(object), collapse = ", ")), call. = FALSE)
  }
  assay
}

.counts_of <- function(object, assay = NULL, slot = "counts", fun = "saveR") {
  if (.is_seurat(object)) {
    assay <- .seurat_assay(object, assay)
    m <- SeuratObject::GetAssayData(object, slot = slot, assay = assay)
    if (any(dim(m) == 0)) {
      stop(sprintf("%s: the Seurat object has no '%s' in assay '%s'; SAVE needs raw counts. ", fun, slot, assay),
           "Create the object with CreateSeuratObject(counts = ...) or SetAssayData(object, slot = \"counts\", new.data = counts).",
           call. = FALSE)
    }
    return(m)
  }
  if (is.null(assay)) assay <- "counts"
  if (!assay %in% SummarizedExperiment::assayNames(object)) {
    stop(sprintf("%s: the SingleCellExperiment has no '%s' assay (its assays: %s); SAVE needs raw counts. ", fun, assay,
                 paste(SummarizedExperiment::assayNames(object), collapse = ", ") %or% "none"),
         "Add them with assay(sce, \"counts\") <- counts, or name the assay that holds them with assay = .", call. = FALSE)
  }
  SummarizedExperiment::assay(object, assay, withDimnames = TRUE)
}

`%or%` <- function(a, b) if (is.null(a) || length(a) == 0 || identical(a, "")) b else a

.metadata_of <- function(object) {
  if (.is_seurat(object)) return(object@meta.data)
  cd <- SummarizedExperiment::colData(object)
  df <- lapply(names(cd), function(nm) cd[[nm]])
  names(df) <- names(cd)
  ok <- vapply(df, function(x) is.atomic(x) && is.null(dim(x)), logical(1))
  df <- df[ok]
  out <- if (length(df)) as.data.frame(df, stringsAsFactors = FALSE, optional = TRUE) else data.frame(row.names = colnames(object))
  names(out) <- names(df)
  rownames(out) <- colnames(object)
  out
}

.check_conditions <- function(meta, conditions, fun) {
  if (!is.character(conditions) || !length(conditions) || anyNA(conditions)) {
    stop(sprintf("%s: 'conditions' must name one or more cell-metadata columns, e.g. conditions = c(\"batch\", \"celltype\").", fun), call. = FALSE)
  }
  missing <- setdiff(conditions, names(meta))
  if (length(missing)) {
    stop(sprintf("%s: condition column(s) %s not found in the cell metadata; available columns: %s. Add the column (object$%s <- ...) or choose another.",
                 fun, paste0("'", missing, "'", collapse = ", "), paste(names(meta), collapse = ", ") %or% "none", missing[1]),
         call. = FALSE)
  }
  invisible(TRUE)
}

# The AnnData (a Python object, never returned to the user) for counts + chosen metadata.
.anndata_of <- function(counts, meta, layers = list(), obsm = list(), uns_json = NULL) {
  py <- .py()
  if (ncol(counts) == 0 || nrow(counts) == 0) {
    stop(sprintf("saveR: the object has zero %s; give an object with at least one cell and one gene.",
                 if (ncol(counts) == 0) "cells" else "genes"), call. = FALSE)
  }
  if (is.null(rownames(counts)) || is.null(colnames(counts))) {
    stop("saveR: the expression matrix needs gene (row) and cell (column) names.", call. = FALSE)
  }
  .pycall(py$bridge$make_anndata(.matrix_parts(counts), .columns_parts(meta), colnames(counts), rownames(counts),
                                 lapply(layers, .matrix_parts), obsm, uns_json), "converting to AnnData")
}

.object_to_anndata <- function(object, assay = NULL, slot = "counts", conditions = NULL, full = FALSE, fun = "saveR") {
  .check_object(object, fun)
  counts <- .counts_of(object, assay, slot, fun)
  meta <- .metadata_of(object)
  if (!is.null(conditions)) {
    .check_conditions(meta, conditions, fun)
    meta <- meta[, conditions, drop = FALSE]
  }
  layers <- list(); obsm <- list(); keys <- list(); dim_names <- list()
  if (full) {
    if (.is_seurat(object)) {
      assay <- .seurat_assay(object, assay)
      data <- SeuratObject::GetAssayData(object, slot = "data", assay = assay)
      if (all(dim(data) == dim(counts)) && !identical(data, counts)) layers$data <- data
      for (red in SeuratObject::Reductions(object)) {
        emb <- SeuratObject::Embeddings(object, reduction = red)
        obsm[[paste0("X_", red)]] <- unname(emb[colnames(counts), , drop = FALSE])
        keys[[red]] <- SeuratObject::Key(object[[red]])
      }
    } else {
      an <- SummarizedExperiment::assayNames(object)
      for (nm in setdiff(an, assay %or% "counts")) layers[[nm]] <- SummarizedExperiment::assay(object, nm, withDimnames = TRUE)
      for (red in SingleCellExperiment::reducedDimNames(object)) {
        emb <- as.matrix(SingleCellExperiment::reducedDim(object, red))
        obsm[[paste0("X_", red)]] <- unname(emb)
        if (!is.null(colnames(emb))) dim_names[[red]] <- I(colnames(emb))
      }
    }
  }
  # anndata stores string columns as categoricals; remember which were plain character vectors.
  character_columns <- names(meta)[vapply(meta, function(x) is.character(x), logical(1))]
  uns <- jsonlite::toJSON(list(source = if (.is_seurat(object)) "Seurat" else "SingleCellExperiment",
                               reduction_keys = keys, reduction_colnames = dim_names, counts = slot, character_columns = I(character_columns)),
                          auto_unbox = TRUE)
  .anndata_of(counts, meta, layers, obsm, as.character(uns))
}

# ---------------------------------------------------------------------------- AnnData -> objects
.anndata_parts <- function(adata) {
  py <- .py()
  parts <- .r(.pycall(py$bridge$anndata_to_r(adata), "converting from AnnData"))
  parts$obs_names <- as.character(unlist(parts$obs_names))
  parts$var_names <- as.character(unlist(parts$var_names))
  parts
}

.reduction_name <- function(key) sub("^X_", "", key)

.parts_to_object <- function(parts, output = c("SingleCellExperiment", "Seurat"), reduction_keys = list()) {
  output <- match.arg(output)
  cells <- parts$obs_names; genes <- parts$var_names
  if (anyDuplicated(cells)) {
    stop(sprintf(paste0("saveR: cell names are not unique (e.g. '%s'); R objects need unique cell names. ",
                        "Make them unique first (Python: adata.obs_names_make_unique())."),
                 cells[anyDuplicated(cells)]), call. = FALSE)
  }
  X <- .matrix_from_parts(parts$X, genes, cells)
  integer_X <- isTRUE(as.logical(parts$X$integer))
  meta <- .frame_from_parts(parts$obs, cells)
  layers <- lapply(parts$layers, .matrix_from_parts, genes = genes, cells = cells)
  saver_uns <- if (nzchar(parts$uns_saveR %or% "")) jsonlite::fromJSON(parts$uns_saveR, simplifyVector = FALSE) else list()
  keys <- utils::modifyList(saver_uns$reduction_keys %or% list(), reduction_keys)
  for (nm in intersect(unlist(saver_uns$character_columns), names(meta))) meta[[nm]] <- as.character(meta[[nm]])
  obsm <- lapply(parts$obsm, function(a) { a <- as.matrix(a); rownames(a) <- cells; a })
  pysave_uns <- if (nzchar(parts$uns_pysave %or% "")) .nonfinite(jsonlite::fromJSON(parts$uns_pysave, simplifyVector = TRUE)) else list()
  if (output == "Seurat") {
    .need("SeuratObject", "to build Seurat objects")
    if (any(grepl("_", genes, fixed = TRUE))) {
      warning("saveR: Seurat replaces '_' in gene names with '-'.", call. = FALSE)
    }
    assay <- if (integer_X) {
      a <- SeuratObject::CreateAssayObject(counts = .as_sparse(X))
      if (!is.null(layers$data)) a <- SeuratObject::SetAssayData(a, slot = "data", new.data = layers$data)
      a
    } else {
      SeuratObject::CreateAssayObject(data = X)
    }
    SeuratObject::Key(assay) <- "rna_"
    obj <- SeuratObject::CreateSeuratObject(assay, project = "saveR")
    if (ncol(meta)) obj@meta.data <- meta
    for (nm in names(obsm)) {
      red <- .reduction_name(nm)
      key <- keys[[red]] %or% paste0(gsub("[^A-Za-z0-9]", "", toupper(red)) %or% "DIM", "_")
      emb <- obsm[[nm]]
      colnames(emb) <- paste0(key, seq_len(ncol(emb)))
      obj[[red]] <- SeuratObject::CreateDimReducObject(embeddings = emb, key = key, assay = SeuratObject::DefaultAssay(obj))
    }
    if (length(pysave_uns)) obj@misc$pysave <- pysave_uns
    return(obj)
  }
  .need("SingleCellExperiment", "to build SingleCellExperiment objects")
  assays <- list()
  assays[[if (integer_X) "counts" else "logcounts"]] <- X
  for (nm in names(layers)) assays[[nm]] <- layers[[nm]]
  sce <- SingleCellExperiment::SingleCellExperiment(assays = assays, colData = S4Vectors::DataFrame(meta, check.names = FALSE))
  for (nm in names(obsm)) {
    red <- .reduction_name(nm)
    cn <- unlist(saver_uns$reduction_colnames[[red]])
    if (length(cn) == ncol(obsm[[nm]])) colnames(obsm[[nm]]) <- cn
    SingleCellExperiment::reducedDim(sce, red) <- obsm[[nm]]
  }
  if (length(pysave_uns)) S4Vectors::metadata(sce)$pysave <- pysave_uns
  sce
}

#' Write a Seurat or SingleCellExperiment object to an .h5ad (AnnData) file
#'
#' Counts stay sparse and are stored as integers when they are integer-valued; cell metadata
#' keeps factor levels (as categoricals), integer, numeric, logical and character columns and
#' missing values. For Seurat (v4), `X` holds the assay's `slot` (raw counts by default),
#' `layers["data"]` the normalized data (when it differs), and each reduction becomes
#' `obsm["X_<name>"]`. For a SingleCellExperiment, `X` holds the `assay` (default "counts"),
#' the other assays become layers and each reducedDim `obsm["X_<name>"]`. [ReadH5AD()] reads
#' the file back exactly. The file follows the pysave exchange format (docs/exchange-format.md).
#'
#' @param object A Seurat (v4) or SingleCellExperiment object.
#' @param path Output `.h5ad` path.
#' @param assay Seurat assay (default: the default assay) or SingleCellExperiment assay
#'   (default "counts") that becomes `X`.
#' @param slot Seurat slot that becomes `X` ("counts").
#' @param overwrite Replace an existing file.
#' @return The path, invisibly.
#' @examples
#' if (SAVEAvailable() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   path <- tempfile(fileext = ".h5ad")
#'   WriteH5AD(SeuratObject::pbmc_small, path)
#'   back <- ReadH5AD(path, output = "Seurat")
#' }
#' @export
WriteH5AD <- function(object, path, assay = NULL, slot = "counts", overwrite = FALSE) {
  .check_object(object, "WriteH5AD")
  stopifnot(is.character(path), length(path) == 1)
  adata <- .object_to_anndata(object, assay = assay, slot = slot, full = TRUE, fun = "WriteH5AD")
  .pycall(.py()$bridge$write_h5ad(adata, path.expand(path), overwrite), "WriteH5AD")
  invisible(path)
}

#' Read an .h5ad (AnnData) file into a SingleCellExperiment or Seurat object
#'
#' Sparse matrices stay sparse. An integer-valued `X` becomes counts (SCE assay "counts",
#' Seurat slot "counts"); other values (e.g. pysave's generated log-normalized expression)
#' become "logcounts" / the Seurat "data" slot. Layers become assays (a layer named "data"
#' becomes the Seurat data slot), categoricals become factors with their levels, `obsm`
#' entries become reductions, and pysave provenance (`uns["pysave"]`) goes to
#' `metadata(sce)$pysave` or `object@misc$pysave`.
#'
#' @param path An `.h5ad` file (or `.rds` holding an SCE or Seurat object, read through pysave).
#' @param output "SingleCellExperiment" or "Seurat".
#' @return A SingleCellExperiment or Seurat object.
#' @examples
#' if (SAVEAvailable()) {
#'   sce <- ReadH5AD(system.file("extdata", "pbmc_tiny.h5ad", package = "saveR"))
#'   sce
#' }
#' @export
ReadH5AD <- function(path, output = c("SingleCellExperiment", "Seurat")) {
  output <- match.arg(output)
  if (!is.character(path) || length(path) != 1 || !file.exists(path)) {
    stop(sprintf("ReadH5AD: file '%s' does not exist; check the path.", paste(path, collapse = " ")), call. = FALSE)
  }
  adata <- .pycall(.py()$bridge$read_h5ad(normalizePath(path)), "ReadH5AD")
  .parts_to_object(.anndata_parts(adata), output)
}

# The bridge sends inf / NaN of pysave's provenance as {"__float__": "inf"} (JSON has neither).
.nonfinite <- function(x) {
  if (!is.list(x) || is.data.frame(x)) return(x)
  if (identical(names(x), "__float__")) return(c(inf = Inf, `-inf` = -Inf, nan = NaN)[[x[[1]]]])
  x[] <- lapply(x, .nonfinite)
  x
}
