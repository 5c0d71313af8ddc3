#' Train SAVE on a Seurat or SingleCellExperiment object and add its latent space
#'
#' Registers the `conditions` (cell-metadata columns) and the raw counts, trains a SAVE model
#' (a gene-block attention VAE, then latent flow matching) with pysave, saves it to a model
#' directory, and returns the **same object** with the SAVE latent space (encoder means) as a
#' new reduction: `object[["save"]]` (key "SAVE_") for Seurat, `reducedDim(sce, "SAVE")` for
#' a SingleCellExperiment. The model directory and the training summary are kept where each
#' ecosystem keeps such things: `object@tools$RunSAVE` (see `SeuratObject::Tool`) and
#' `metadata(sce)$SAVE`. With `corrected = TRUE` batch-corrected log-normalized expression is
#' added too (Seurat: a new assay "SAVE"; SCE: assay "save_corrected", or an altExp "SAVE" when
#' the model's genes are not the object's rows). With `model =`, an existing model is used and
#' nothing is trained.
#'
#' Counts are passed to Python sparse (never densified) and must be raw, non-negative
#' integer counts. Training progress is printed as plain lines (readable in RStudio and knitr).
#'
#' @section Engine arguments (through `...`, names must be exact):
#' Network (`SAVE(...)`): `gene_embeddings` ("data"), `block_size` (NULL), `n_blocks` (NULL:
#' 32 blocks), `likelihood` ("bernoulli", "gaussian" or "nb"), `hidden_size` (256),
#' `condition_dim` (512), `latent_dim` (128), `latent_token_size` (8), `n_encoder_layers` (3),
#' `n_decoder_layers` (3), `decoder_head_size` (NULL: `hidden_size`; 0: the paper's direct linear
#' map), `feed_forward_size` (NULL: 4 x `hidden_size`; 2 x trains faster on CPUs),
#' `n_heads` (4), `dropout` (0), `gelu_approximate` ("none": exact GELU; "tanh": its approximation,
#' which models saved before 2026-12-05 use and is slower on CPUs), `flow_hidden_size` (128),
#' `flow_layers` (2), `flow_token_size` (32), `flow_heads` (4), `flow_condition_dim` (256), `mask_prob` (0.15; the paper's 0.6),
#' `mask_all_prob` (0.1: the probability of masking all of a cell's conditions at once in the flow's training,
#' which trains guidance's unconditional velocity whatever the number of conditions),
#' `vae_mask_prob` (0.2; 0 for integrating batches that hold the same cell populations, which
#' then corrects by averaging over the batches), `kl_weight` (0.05; use 0.5 when the model is for integration:
#' better scIB scores on three datasets, worse generated cells and perturbation transfer;
#' see the pysave benchmarks; training warns if the latent collapses, and
#' `training$active_latent_dims` in the stored model information records how many latent dimensions are in use).
#' Training (`SAVE.train(...)`): `flow_epochs` (NULL: 2 x max_epochs, at least 8,000 steps),
#' `lr` (1e-3; the paper's 1e-4 trained worse), `flow_lr` (1e-3), `weight_decay` (2.5e-5), `warmup_epochs` (NULL: 2 epochs for the VAE, a quarter of the flow's epochs for the flow),
#' `validation_fraction` (0.1), `early_stopping` (TRUE), `patience` (20 epochs, the VAE's; the flow runs all its epochs),
#' `checkpoint_dir` (NULL: no checkpoints), `checkpoint_every` (10 epochs), `resume` (FALSE:
#' with TRUE, continue from the checkpoint in `checkpoint_dir`), `precision` ("auto": bf16
#' autocast on CUDA GPUs, full precision on CPU; "32" or "bf16" to choose), `torch_compile` (FALSE;
#' TRUE compiles the VAE with torch.compile for training: 1.34x faster in bf16 on a 2-core CPU,
#' after a one-off compilation of 1.5-2 minutes, so it pays on long runs over many cells; needs a
#' C++ compiler on the CPU). Atlases larger
#' than memory: train from the .h5ad file with `pysave train --backed` (see the pysave README).
#' The defaults are pysave's (see the pysave README, "Defaults, and why").
#'
#' @param object A Seurat (v4) or SingleCellExperiment object with raw counts.
#' @param conditions Cell-metadata columns to condition on (e.g. batch, cell type, stimulation).
#' @param batch_key One of `conditions` that is the batch (per-batch scaling; the condition
#'   masked or set to `reference` when `corrected = TRUE`).
#' @param assay Seurat assay (default: the default assay) or SCE assay ("counts") with raw counts.
#' @param slot Seurat slot holding raw counts ("counts").
#' @param model An existing model (directory or [LoadSAVE()] result) to use instead of training.
#' @param out_dir Where to save the trained model (default: a new folder in `tempdir()`, which
#'   disappears with the R session; name a folder to keep it).
#' @param reduction_name,reduction_key Name and key of the new reduction (SCE: the reducedDim name).
#' @param corrected Also add batch-corrected expression (needs `batch_key` or a model with one):
#'   `TRUE` (pysave's default path, "decoder"), `"decoder"` (each cell's latent decoded with the
#'   batch masked) or `"flow"` (the latent first moved through the flow with the batch masked,
#'   at 100 flow passes per cell: batches mix much better, but when batches differ in cell-type
#'   composition and cell type is not a condition, cell types get mixed too). With
#'   `"flow"` the moved latent is added as a second reduction, `"<reduction_name>_corrected"`
#'   (e.g. `RunUMAP(obj, reduction = "save_corrected", dims = 1:128)`). `"flow"` towards a
#'   `reference` batch that some of the cells' combinations never had in training warns and names
#'   them: the flow composes those from each condition alone.
#' @param reference Batch to correct towards (default: the batch is masked; `"all"` for a model
#'   trained with `vae_mask_prob = 0`, whose VAE never decoded a masked batch). Several batches
#'   (`c("b1", "b2")`) or `"all"`: each cell is decoded under each of them and the
#'   log-normalized expressions are averaged (decoder path only; with `kl_weight = 0.5` it scored
#'   within 0.01 scIB Total of the masked batch on three datasets, see the pysave benchmarks).
#' @param normalize_total With `corrected`: rescale each corrected cell to a log1p(CP10k) profile
#'   (its expm1 values summing to 1e4 over the model's genes, as the input was normalized; the
#'   default), or `FALSE` for the decoder's mean as it is (E[log1p] per gene).
#' @param max_epochs VAE epochs (NULL: min(400, 400 x 20,000 / cells)).
#' @param batch_size Minibatch size (256).
#' @param seed One seed for gene blocks, weights, data order, masking and sampling (0).
#' @param device "auto" (GPU when present), "cpu", "cuda", "cuda:N" or "mps".
#' @param overwrite Replace `out_dir` if it exists.
#' @param verbose Print progress.
#' @param ... Further engine arguments (see the section above); unknown names are an error.
#' @return The input object with the SAVE reduction (and corrected expression) added.
#' @seealso [GenerateCells()], [TransferCells()], [LoadSAVE()], [SAVEConfig()]
#' @examples
#' \donttest{
#' if (SAVEAvailable() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   pbmc <- SeuratObject::pbmc_small
#'   pbmc <- RunSAVE(pbmc, conditions = "groups", max_epochs = 5, flow_epochs = 20,
#'                   hidden_size = 32, condition_dim = 32, latent_dim = 16, n_encoder_layers = 1,
#'                   n_decoder_layers = 1, n_heads = 2, flow_hidden_size = 32, flow_layers = 1,
#'                   flow_token_size = 8, flow_heads = 2, n_blocks = 8, verbose = FALSE)
#'   dim(SeuratObject::Embeddings(pbmc, "save"))
#' }
#' }
#' @export
RunSAVE <- function(object, ...) UseMethod("RunSAVE")

#' @rdname RunSAVE
#' @export
RunSAVE.default <- function(object, ...) {
  .check_object(object, "RunSAVE")
}

#' @rdname RunSAVE
#' @export
RunSAVE.Seurat <- function(object, conditions = c("batch", "celltype"), batch_key = NULL, assay = NULL,
                           slot = "counts", model = NULL, out_dir = NULL, reduction_name = "save",
                           reduction_key = "SAVE_", corrected = FALSE, reference = NULL, normalize_total = TRUE, max_epochs = NULL,
                           batch_size = 256L, seed = 0L, device = "auto", overwrite = FALSE, verbose = TRUE, ...) {
  .check_object(object, "RunSAVE")
  if (missing(conditions)) conditions <- NULL
  assay <- .seurat_assay(object, assay)
  res <- .run_save(object, conditions, batch_key, assay, slot, model, out_dir, corrected, reference, normalize_total,
                   max_epochs, batch_size, seed, device, overwrite, verbose, list(...))
  colnames(res$latent) <- paste0(reduction_key, seq_len(ncol(res$latent)))
  object[[reduction_name]] <- SeuratObject::CreateDimReducObject(
    embeddings = res$latent, key = reduction_key, assay = assay, misc = list(model_dir = res$info$model_dir))
  if (!is.null(res$corrected)) {
    object[["SAVE"]] <- SeuratObject::CreateAssayObject(data = res$corrected)
  }
  if (!is.null(res$moved)) {
    key <- paste0(sub("_$", "", reduction_key), "C_")
    colnames(res$moved) <- paste0(key, seq_len(ncol(res$moved)))
    object[[paste0(reduction_name, "_corrected")]] <- SeuratObject::CreateDimReducObject(
      embeddings = res$moved, key = key, assay = assay, misc = list(model_dir = res$info$model_dir))
  }
  object@tools$RunSAVE <- res$info
  object
}

#' @rdname RunSAVE
#' @export
RunSAVE.SingleCellExperiment <- function(object, conditions = c("batch", "celltype"), batch_key = NULL,
                                         assay = "counts", model = NULL, out_dir = NULL,
                                         reduction_name = "SAVE", corrected = FALSE, reference = NULL, normalize_total = TRUE,
                                         max_epochs = NULL, batch_size = 256L, seed = 0L, device = "auto",
                                         overwrite = FALSE, verbose = TRUE, ...) {
  .check_object(object, "RunSAVE")
  if (missing(conditions)) conditions <- NULL
  res <- .run_save(object, conditions, batch_key, assay, "counts", model, out_dir, corrected, reference, normalize_total,
                   max_epochs, batch_size, seed, device, overwrite, verbose, list(...))
  colnames(res$latent) <- paste0("SAVE_", seq_len(ncol(res$latent)))
  SingleCellExperiment::reducedDim(object, reduction_name) <- res$latent
  if (!is.null(res$corrected)) {
    cm <- res$corrected
    if (identical(sort(rownames(cm)), sort(rownames(object))) && nrow(cm) == nrow(object)) {
      SummarizedExperiment::assay(object, "save_corrected", withDimnames = FALSE) <- cm[rownames(object), colnames(object)]
    } else {
      SingleCellExperiment::altExp(object, "SAVE") <- SingleCellExperiment::SingleCellExperiment(list(save_corrected = cm))
    }
  }
  if (!is.null(res$moved)) {
    colnames(res$moved) <- paste0("SAVE_corrected_", seq_len(ncol(res$moved)))
    SingleCellExperiment::reducedDim(object, paste0(reduction_name, "_corrected")) <- res$moved
  }
  S4Vectors::metadata(object)$SAVE <- res$info
  object
}

.run_save <- function(object, conditions, batch_key, assay, slot, model, out_dir, corrected, reference, normalize_total,
                      max_epochs, batch_size, seed, device, overwrite, verbose, dots) {
  engine <- .engine_args(dots, "RunSAVE")
  if (!is.null(model)) {
    info_model <- .resolve_model(model, device = device, fun = "RunSAVE")
    meta_cols <- names(.metadata_of(object))
    if (is.null(conditions)) {
      conditions <- intersect(info_model$conditions, meta_cols)
      masked <- setdiff(info_model$conditions, meta_cols)
      if (verbose && length(masked)) message("RunSAVE: condition(s) ", paste(masked, collapse = ", "), " not in the metadata; they are masked.")
    } else if (length(setdiff(conditions, info_model$conditions))) {
      stop(sprintf("RunSAVE: the model's conditions are %s; %s is not one of them. Pass conditions = a subset of them (or leave it out).",
                   paste(info_model$conditions, collapse = ", "), paste(setdiff(conditions, info_model$conditions), collapse = ", ")), call. = FALSE)
    }
  } else if (is.null(conditions)) {
    conditions <- c("batch", "celltype")
  }
  if (!is.logical(normalize_total) || length(normalize_total) != 1 || is.na(normalize_total)) {
    stop("RunSAVE: normalize_total must be TRUE (the corrected expression rescaled to log1p(CP10k) profiles) or FALSE (the decoder's mean as it is).",
         call. = FALSE)
  }
  if (!is.null(batch_key) && (!is.character(batch_key) || length(batch_key) != 1 || !batch_key %in% conditions)) {
    stop("RunSAVE: batch_key must be one of the conditions, e.g. conditions = c(\"batch\", \"celltype\"), batch_key = \"batch\".", call. = FALSE)
  }
  train_given <- c(names(dots), if (!is.null(max_epochs)) "max_epochs", if (!identical(as.numeric(batch_size), 256)) "batch_size",
                   if (!identical(as.numeric(seed), 0)) "seed", if (!is.null(out_dir)) "out_dir")
  if (!is.null(model) && length(train_given)) {
    stop(sprintf("RunSAVE: training arguments (%s) cannot be used with an existing model; drop them or drop 'model'.",
                 paste(train_given, collapse = ", ")), call. = FALSE)
  }
  adata <- .object_to_anndata(object, assay = assay, slot = slot, conditions = conditions, fun = "RunSAVE")
  py <- .py()
  t0 <- proc.time()[["elapsed"]]
  if (is.null(model)) {
    if (is.null(out_dir)) out_dir <- tempfile("save_model_")
    if (dir.exists(out_dir) && !isTRUE(overwrite)) {
      stop(sprintf("RunSAVE: out_dir '%s' already exists; choose another folder or pass overwrite = TRUE.", out_dir), call. = FALSE)
    }
    params <- c(engine$model, list(seed = seed))
    train <- c(engine$train, list(max_epochs = max_epochs, batch_size = batch_size, seed = seed, device = device,
                                  progress = isTRUE(verbose)))
    train <- train[!vapply(train, is.null, logical(1))]
    if (verbose) message(sprintf("RunSAVE: training SAVE on %d cells x %d genes, conditions: %s",
                                 .r(py$builtins$int(adata$n_obs)), .r(py$builtins$int(adata$n_vars)), paste(conditions, collapse = ", ")))
    .pycall(py$pysave$SAVE$setup_anndata(adata, condition_keys = as.list(conditions), batch_key = batch_key), "RunSAVE")
    pymodel <- .pycall(py$bridge$call(py$pysave$SAVE, list(adata), c(params, list(verbose = isTRUE(verbose)))), "RunSAVE")
    .pycall(py$bridge$call(pymodel$train, list(), train), "RunSAVE (training)")
    .pycall(pymodel$save(path.expand(out_dir), overwrite = isTRUE(overwrite)), "RunSAVE (saving the model)")
    out_dir <- normalizePath(out_dir)
    .remember_model(out_dir, device, pymodel)
    if (verbose) message("RunSAVE: model saved to ", out_dir,
                         if (startsWith(out_dir, normalizePath(tempdir()))) " (a temporary folder: pass out_dir = to keep it)" else "")
    info_model <- LoadSAVE(out_dir, device = device)
  } else {
    pymodel <- .py_model(info_model$path, device, verbose)
  }
  latent <- .r(.pycall(pymodel$get_latent_representation(adata, key_added = NULL), "RunSAVE (latent)"))
  latent <- as.matrix(latent)
  rownames(latent) <- .chr(adata$obs_names$tolist())
  cm <- NULL
  moved <- NULL
  via <- .correction_via(corrected)
  if (!is.null(via)) {
    if (is.null(batch_key) && is.null(info_model$batch_key)) {
      stop("RunSAVE: corrected = TRUE needs a batch: pass batch_key = (one of the conditions).", call. = FALSE)
    }
    X <- .r(.pycall(pymodel$correct(adata, batch_key = batch_key, reference = reference, layer_added = NULL, via = via,
                                    normalize_total = normalize_total,
                                    latent_key_added = "X_save_corrected"), "RunSAVE (correction)"))
    cm <- t(as.matrix(X))
    dimnames(cm) <- list(info_model$genes, rownames(latent))
    if (via == "flow") {
      moved <- as.matrix(.r(adata$obsm$get("X_save_corrected")))
      rownames(moved) <- rownames(latent)
    }
  }
  info <- list(model_dir = info_model$path, conditions = info_model$conditions, batch_key = info_model$batch_key,
               categories = info_model$categories, training = info_model$training, params = info_model$params,
               trained_here = is.null(model), seconds = round(proc.time()[["elapsed"]] - t0, 2),
               date = format(Sys.time(), "%Y-%m-%d %H:%M:%S"))
  list(latent = latent, corrected = cm, moved = moved, info = info)
}

# corrected = FALSE / TRUE (pysave's default path) / "decoder" / "flow" -> NULL or the path.
.correction_via <- function(corrected) {
  if (isFALSE(corrected)) return(NULL)
  if (isTRUE(corrected)) return(.r(.py()$pysave$model$DEFAULT_CORRECT_VIA))
  if (is.character(corrected) && length(corrected) == 1 && corrected %in% c("decoder", "flow")) return(corrected)
  stop("RunSAVE: corrected must be FALSE, TRUE, \"decoder\" or \"flow\".", call. = FALSE)
}
