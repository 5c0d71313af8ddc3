#' Train a SAVE model straight from an .h5ad file, streaming it from disk
#'
#' For atlases too large to hold in an R session: the cells are never loaded into R. With
#' `backed = TRUE` (the default) pysave reads the file in chunks (`pysave train --backed`):
#' one streaming pass for the count checks, library sizes and scalers, then chunk-shuffled
#' minibatches, so memory stays flat in the number of cells. The counts must be CSR (or dense)
#' in `X` or in `layer`. Use the returned model with [RunSAVE()] (`model =`), [GenerateCells()]
#' or [TransferCells()]. Several processes or GPUs: run `torchrun ... -m pysave train` from a
#' shell (see the pysave README).
#'
#' @param path An .h5ad file with raw counts (e.g. written by [WriteH5AD()] or scanpy).
#' @param conditions obs columns to condition on.
#' @param batch_key One of `conditions` that is the batch (per-batch scaling).
#' @param layer Layer holding raw counts (NULL: X).
#' @param out_dir Model directory to write (it must not exist unless `overwrite = TRUE`).
#' @param backed Stream from disk (TRUE) or load the file into memory first (FALSE).
#' @param chunk_size Rows per sequential read when `backed` (NULL: 4,096).
#' @param max_epochs,batch_size,seed,device,verbose As in [RunSAVE()].
#' @param overwrite Replace `out_dir` if it exists.
#' @param ... Engine arguments, as in [RunSAVE()] (exact names).
#' @return The trained model, as [LoadSAVE()] returns it.
#' @examples
#' \dontrun{
#' model <- TrainSAVEH5AD("atlas.h5ad", conditions = c("batch", "cell_type"), batch_key = "batch",
#'                        out_dir = "atlas_model")
#' sce <- RunSAVE(sce, model = model)
#' }
#' @export
TrainSAVEH5AD <- function(path, conditions, out_dir, batch_key = NULL, layer = NULL, backed = TRUE,
                          chunk_size = NULL, max_epochs = NULL, batch_size = 256L, seed = 0L, device = "auto",
                          overwrite = FALSE, verbose = TRUE, ...) {
  fun <- "TrainSAVEH5AD"
  if (!is.character(path) || length(path) != 1 || !file.exists(path)) {
    stop(sprintf("%s: '%s' is not an existing .h5ad file; give the path of one.", fun, paste(path, collapse = " ")), call. = FALSE)
  }
  if (missing(conditions) || !is.character(conditions) || !length(conditions)) {
    stop(sprintf("%s: give conditions = the obs columns to condition on, e.g. c(\"batch\", \"cell_type\").", fun), call. = FALSE)
  }
  if (missing(out_dir) || !is.character(out_dir) || length(out_dir) != 1) {
    stop(sprintf("%s: give out_dir = the folder to write the model to.", fun), call. = FALSE)
  }
  if (dir.exists(out_dir) && !isTRUE(overwrite)) {
    stop(sprintf("%s: out_dir '%s' already exists; choose another folder or pass overwrite = TRUE.", fun, out_dir), call. = FALSE)
  }
  engine <- .engine_args(list(...), fun)
  py <- .py()
  adata <- .pycall(py$pysave$io$read_h5ad(path.expand(path), backed = isTRUE(backed)), fun)
  .pycall(py$pysave$SAVE$setup_anndata(adata, condition_keys = as.list(conditions), layer = layer, batch_key = batch_key), fun)
  params <- c(engine$model, list(seed = seed, verbose = isTRUE(verbose)))
  pymodel <- .pycall(py$bridge$call(py$pysave$SAVE, list(adata), params), fun)
  train <- c(engine$train, list(max_epochs = max_epochs, batch_size = batch_size, seed = seed, device = device,
                                progress = isTRUE(verbose), chunk_size = chunk_size))
  train <- train[!vapply(train, is.null, logical(1))]
  .pycall(py$bridge$call(pymodel$train, list(), train), paste(fun, "(training)"))
  .pycall(pymodel$save(path.expand(out_dir), overwrite = isTRUE(overwrite)), paste(fun, "(saving the model)"))
  out_dir <- normalizePath(out_dir)
  .remember_model(out_dir, device, pymodel)
  if (verbose) message(fun, ": model saved to ", out_dir)
  LoadSAVE(out_dir, device = device)
}
