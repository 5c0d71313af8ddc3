#' Score generated, predicted or integrated cells with pysave's evaluation protocols
#'
#' The protocols, numbers and files of `pysave evaluate` and `pysave.evaluate()` (the same
#' Python function does the work), for Seurat and SingleCellExperiment objects or `.h5ad` files:
#' - `task = "generation"`: `generated` cells against `real` held-out cells, per group of the
#'   `groups` metadata columns: W1 / W2 (exact EMD) and RBF MMD in a 30-PC space fitted on the
#'   real cells, per-gene-mean R^2 / PCC, the spread (generated over real total variance in that
#'   space: below `floor_spread`, under-dispersed output, which W1 rewards), and with `floor`
#'   (other real cells of the same groups, e.g. the training cells) the real-vs-real noise floor
#'   of each metric (`floor_*`), and the same with the floor cells drawn at each group's generated
#'   size (`floor_sized_*`: W1 falls with the number of cells, so read W1 against it), and the
#'   trivial baseline: a Gaussian fitted to each group's floor cells in the PC space, drawn at
#'   the generated size (`gaussian_*`). Sets with different genes are compared on the genes they share.
#' - `task = "perturbation"`: predicted stimulated cells (`generated`) against `real`, which holds
#'   both control and stimulated cells: R^2 / PCC of per-gene means over all genes and the top
#'   `n_degs` DEGs, per value of `cell_type_key`, next to the control cells and the noise floor.
#' - `task = "batch"`: scIB Bio conservation, Batch correction and Total of the `reductions` of
#'   `real` (no `generated`); needs the Python extra `pip install pysave[eval]`.
#'
#' Each object's expression is read from its raw counts when it has them (Seurat "counts" slot,
#' SCE "counts" assay) and otherwise from its log-normalized values ("data", "logcounts"), as
#' [GenerateCells()] and [TransferCells()] return them; the protocols normalise both alike.
#'
#' @param real The real cells: a Seurat or SingleCellExperiment object, or the path of an
#'   `.h5ad` (or `.rds`) file.
#' @param generated The generated (or predicted) cells, of the same kinds; `NULL` for the batch task.
#' @param task "generation", "perturbation" or "batch".
#' @param out_dir Folder for metrics.tsv, summary.json and the plots (metric bars, and UMAPs of
#'   real against generated cells unless `umap = FALSE`). `NULL` (default) writes nothing.
#' @param groups,floor,n_hvg,n_pcs Generation: metadata column(s) that define the groups,
#'   other real cells for the noise floor (optional), genes and PCs of the scoring space.
#' @param condition_key,control,stimulated,cell_type_key,n_degs Perturbation: the column and
#'   values of the condition, the column scored per value, the number of top DEGs.
#' @param batch_key,label_key,reductions,layers Batch: the batch and cell-label columns, the
#'   reductions (Seurat) or reducedDims (SCE) to score (for a file: obsm keys, e.g. "X_save"),
#'   and expression scored through a 50-PC PCA (rows named "pca_<name>"): SCE assays (e.g.
#'   "save_corrected" from `RunSAVE(corrected = TRUE)`) and altExps (e.g. "SAVE"), Seurat
#'   assays (e.g. "SAVE", its data slot), or h5ad layers. Counts are log-normalized first;
#'   log-normalized values are used as they are.
#' @param seed Seed of the protocols' random steps (subsampling, PCA, UMAP).
#' @param umap Draw the UMAP plots (the slowest part) when `out_dir` is given.
#' @param overwrite Replace an existing `out_dir`.
#' @return A data.frame with one row per group (generation), cell type (perturbation) or
#'   embedding (batch), the metrics as columns; attributes `summary` (the protocol and its
#'   choices, the means: what summary.json holds) and `files` (the plots written).
#' @examples
#' \dontrun{
#' gen <- GenerateCells(model, conditions = held_out_sce$cell_type, output = "SingleCellExperiment")
#' scores <- EvaluateSAVE(held_out_sce, gen, groups = "cell_type", floor = training_sce, out_dir = "eval")
#' attr(scores, "summary")$mean
#' }
#' @export
EvaluateSAVE <- function(real, generated = NULL, task = c("generation", "perturbation", "batch"), out_dir = NULL,
                         groups = NULL, floor = NULL, n_hvg = 2000L, n_pcs = 30L,
                         condition_key = "condition", control = "control", stimulated = "stimulated",
                         cell_type_key = "cell_type", n_degs = 100L,
                         batch_key = NULL, label_key = NULL, reductions = NULL, layers = NULL,
                         seed = 0L, umap = TRUE, overwrite = FALSE) {
  fun <- "EvaluateSAVE"
  task <- match.arg(task)
  py <- .py()
  out <- if (is.null(out_dir)) NULL else path.expand(out_dir)
  # pysave's own checks of the request, worded for R, before any object is converted
  .pycall(py$pysave$evaluation$check_request(task, !is.null(generated), groups = as.list(groups), batch_key = batch_key,
                                             label_key = label_key, n_embeddings = length(reductions) + length(layers),
                                             out = out, overwrite = isTRUE(overwrite), n_hvg = n_hvg, n_pcs = n_pcs, n_degs = n_degs,
                                             surface = "r"), fun)
  if (length(reductions) && !is.character(real)) {
    have <- if (.is_seurat(real)) SeuratObject::Reductions(real) else SingleCellExperiment::reducedDimNames(real)
    missing <- setdiff(reductions, have)
    if (length(missing)) {
      stop(sprintf("%s: reduction(s) %s not found in the real object (its reductions: %s); run RunSAVE() or a PCA first, or name one it has.",
                   fun, paste0("'", missing, "'", collapse = ", "), paste(have, collapse = ", ") %or% "none"), call. = FALSE)
    }
  }
  real_a <- .eval_anndata(real, fun, "real")
  embeddings <- if (length(reductions)) (if (is.character(real)) reductions else paste0("X_", reductions)) else character(0)
  # Expression kept beside the object's main assay (a Seurat assay such as RunSAVE's "SAVE", an
  # SCE altExp) has its own genes, so it is scored through its PCA here rather than as a layer.
  aside <- .expression_aside(real, layers)
  for (nm in names(aside)) {
    reticulate::py_set_item(real_a$obsm, paste0("pca_", nm), .pycall(py$bridge$expression_pca(aside[[nm]], as.integer(seed)), fun))
  }
  layers <- setdiff(layers, names(aside))
  embeddings <- c(embeddings, if (length(aside)) paste0("pca_", names(aside)))
  args <- list(task = task, out = out, groups = as.list(groups),
               floor = if (is.null(floor)) NULL else .eval_anndata(floor, fun, "floor"), n_hvg = n_hvg, n_pcs = n_pcs,
               condition_key = condition_key, control = control, stimulated = stimulated, cell_type_key = cell_type_key,
               n_degs = n_degs, batch_key = batch_key, label_key = label_key, embeddings = as.list(embeddings),
               layer_embeddings = as.list(layers), seed = seed, umap = isTRUE(umap), overwrite = isTRUE(overwrite))
  gen_a <- if (is.null(generated)) NULL else .eval_anndata(generated, fun, "generated")
  res <- .pycall(py$bridge$evaluate(real_a, gen_a, args[!vapply(args, is.null, logical(1))]), fun)
  columns <- lapply(.r(res$columns), function(v) if (is.list(v)) as.character(unlist(v)) else as.vector(v))
  table <- data.frame(columns, row.names = .chr(res$rownames), check.names = FALSE, stringsAsFactors = FALSE)
  attr(table, "summary") <- .nonfinite(jsonlite::fromJSON(.r(res$summary_json), simplifyVector = TRUE))
  attr(table, "files") <- .chr(res$files)
  table
}

# The cells x genes matrices of `layers` that live beside the object's main assay: Seurat assays
# (their "data" slot) and SCE altExps (their "logcounts", else first, assay), by name.
.expression_aside <- function(x, layers) {
  if (!length(layers) || is.character(x)) return(list())
  if (.is_seurat(x)) {
    names <- intersect(layers, SeuratObject::Assays(x))
    get <- function(nm) SeuratObject::GetAssayData(x, slot = "data", assay = nm)
  } else {
    names <- setdiff(intersect(layers, SingleCellExperiment::altExpNames(x)), SummarizedExperiment::assayNames(x))
    get <- function(nm) {
      ae <- SingleCellExperiment::altExp(x, nm)
      SummarizedExperiment::assay(ae, if ("logcounts" %in% SummarizedExperiment::assayNames(ae)) "logcounts" else 1L)
    }
  }
  stats::setNames(lapply(names, function(nm) Matrix::t(get(nm))), names)
}

# An AnnData for the evaluation: a file read by pysave, or an object's counts (else its log-normalized values).
.eval_anndata <- function(x, fun, what) {
  if (is.character(x)) {
    if (length(x) != 1 || !file.exists(x)) {
      stop(sprintf("%s: %s must be a Seurat or SingleCellExperiment object or the path of an existing .h5ad file.", fun, what),
           call. = FALSE)
    }
    return(.pycall(.py()$pysave$io$read_anndata(path.expand(x)), fun))
  }
  .check_object(x, fun)
  if (.is_seurat(x)) {
    assay <- .seurat_assay(x, NULL)
    counts <- SeuratObject::GetAssayData(x, slot = "counts", assay = assay)
    slot <- if (all(dim(counts) > 0)) "counts" else "data"
    adata <- .object_to_anndata(x, assay = assay, slot = slot, full = TRUE, fun = fun)
    info <- x@misc$pysave
  } else {
    an <- SummarizedExperiment::assayNames(x)
    assay <- if ("counts" %in% an) "counts" else if ("logcounts" %in% an) "logcounts" else NULL
    if (is.null(assay)) {
      stop(sprintf("%s: the %s SingleCellExperiment has neither a 'counts' nor a 'logcounts' assay (its assays: %s).", fun, what,
                   paste(an, collapse = ", ") %or% "none"), call. = FALSE)
    }
    adata <- .object_to_anndata(x, assay = assay, full = TRUE, fun = fun)
    info <- S4Vectors::metadata(x)$pysave
  }
  # pysave's provenance of generated cells (which output was sampled) goes into the summary
  if (!is.null(info)) reticulate::py_set_item(adata$uns, "pysave", reticulate::r_to_py(info))
  adata
}
