# Model directories: loading (cached per R session), information, and the engine's arguments.

# Arguments of SAVE(...) (the network) and of SAVE.train(...): R name -> engine name.
.MODEL_ARGS <- c(gene_embeddings = "gene_embeddings", block_size = "block_size", n_blocks = "n_blocks",
                 likelihood = "likelihood", hidden_size = "hidden_size", condition_dim = "condition_dim",
                 latent_dim = "latent_dim", latent_token_size = "latent_token_size",
                 n_encoder_layers = "n_encoder_layers", n_decoder_layers = "n_decoder_layers",
                 decoder_head_size = "decoder_head_size", feed_forward_size = "feed_forward_size", n_heads = "n_heads",
                 dropout = "dropout", gelu_approximate = "gelu_approximate", flow_hidden_size = "flow_hidden_size", flow_layers = "flow_layers",
                 flow_token_size = "flow_token_size", flow_heads = "flow_heads",
                 flow_condition_dim = "flow_condition_dim", mask_prob = "mask_prob",
                 mask_all_prob = "mask_all_prob", vae_mask_prob = "vae_mask_prob", kl_weight = "kl_weight")
.TRAIN_ARGS <- c(max_epochs = "max_epochs", flow_epochs = "flow_epochs", batch_size = "batch_size", lr = "lr",
                 flow_lr = "flow_lr", weight_decay = "weight_decay", warmup_epochs = "warmup_epochs",
                 validation_fraction = "validation_fraction", early_stopping = "early_stopping",
                 patience = "early_stopping_patience", checkpoint_dir = "checkpoint_dir",
                 checkpoint_every = "checkpoint_every", resume = "resume", precision = "precision",
                 torch_compile = "torch_compile")

# Split `...` into model and training arguments, refusing unknown or partial names.
.engine_args <- function(dots, fun) {
  if (length(dots) && (is.null(names(dots)) || any(!nzchar(names(dots))))) {
    stop(sprintf("%s: every extra argument must be named (e.g. max_epochs = 50).", fun), call. = FALSE)
  }
  known <- c(names(.MODEL_ARGS), names(.TRAIN_ARGS))
  bad <- setdiff(names(dots), known)
  if (length(bad)) {
    hint <- vapply(bad, function(b) {
      near <- known[agrepl(b, known, max.distance = 0.3) | startsWith(known, b)]
      if (length(near)) paste0(" (did you mean ", paste(near, collapse = " or "), "?)") else ""
    }, character(1))
    stop(sprintf("%s: unknown argument(s) %s. Engine arguments are: %s.", fun,
                 paste0("'", bad, "'", hint, collapse = ", "), paste(known, collapse = ", ")), call. = FALSE)
  }
  dots <- dots[!vapply(dots, is.null, logical(1))]
  model <- dots[intersect(names(dots), names(.MODEL_ARGS))]
  names(model) <- .MODEL_ARGS[names(model)]
  train <- dots[intersect(names(dots), names(.TRAIN_ARGS))]
  names(train) <- .TRAIN_ARGS[names(train)]
  list(model = model, train = train)
}


.model_key <- function(path) {
  w <- file.path(path, "weights.safetensors")
  paste(path, if (file.exists(w)) as.numeric(file.info(w)$mtime) else "", sep = "|")
}

# The Python SAVE model of a directory, loaded once per session (never returned to the user).
.py_model <- function(path, device = "auto", verbose = TRUE) {
  path <- normalizePath(path, mustWork = FALSE)
  key <- paste(.model_key(path), device, sep = "|")
  if (is.null(.saver$models)) .saver$models <- list()
  if (is.null(.saver$models[[key]])) {
    .saver$models[[key]] <- .pycall(.py()$pysave$SAVE$load(path, device = device, verbose = verbose), "loading the model")
  }
  .saver$models[[key]]
}

.remember_model <- function(path, device, pymodel) {
  if (is.null(.saver$models)) .saver$models <- list()
  .saver$models[[paste(.model_key(normalizePath(path)), device, sep = "|")]] <- pymodel
}

#' Load a SAVE model directory and describe it
#'
#' Reads a model directory written by [RunSAVE()], `pysave train` or `SAVE.save()` in Python
#' (`config.json` + `weights.safetensors`), checks it with pysave, and returns its
#' description: conditions and their categories, genes, network parameters and the training
#' summary. Pass the result (or the path) as `model` to [RunSAVE()], [GenerateCells()] and
#' [TransferCells()].
#'
#' @param path Model directory.
#' @param device "auto", "cpu", "cuda", "cuda:N" or "mps": where the model runs.
#' @return A `SAVEModel` object: a list with `path`, `device`, `conditions`, `categories`,
#'   `batch_key`, `genes`, `params`, `training`, `versions` and `is_trained`. It holds no
#'   Python object.
#' @examples
#' if (SAVEAvailable()) {
#'   model <- LoadSAVE(system.file("extdata", "tiny_model", package = "saveR"))
#'   model
#'   model$categories$cell_type
#' }
#' @export
LoadSAVE <- function(path, device = "auto") {
  if (inherits(path, "SAVEModel")) return(path)
  if (!is.character(path) || length(path) != 1 || is.na(path)) {
    stop("LoadSAVE: 'path' must be one model directory (a character string).", call. = FALSE)
  }
  if (!dir.exists(path)) {
    stop(sprintf("LoadSAVE: model directory '%s' does not exist; train one with RunSAVE() or `pysave train`.", path), call. = FALSE)
  }
  path <- normalizePath(path)
  cfg <- .nonfinite(jsonlite::fromJSON(.r(.pycall(.py()$bridge$model_config(path), "LoadSAVE")), simplifyVector = TRUE))
  reg <- cfg$registry
  structure(list(
    path = path, device = device,
    conditions = as.character(reg$condition_keys),
    categories = lapply(reg$categories, as.character),
    batch_key = reg$batch_key,
    genes = as.character(cfg$genes),
    params = cfg$params,
    training = cfg$training,
    versions = cfg$versions,
    is_trained = isTRUE(cfg$is_trained)
  ), class = "SAVEModel")
}

#' @export
print.SAVEModel <- function(x, ...) {
  cat(sprintf("SAVE model (%s) at %s\n", if (x$is_trained) "trained" else "untrained", x$path))
  cat(sprintf("  %d genes; latent %s; likelihood %s\n", length(x$genes), x$params$latent_dim, x$params$likelihood))
  for (k in x$conditions) {
    cats <- x$categories[[k]]
    cat(sprintf("  condition %s%s: %d categories (%s%s)\n", k, if (identical(k, x$batch_key)) " [batch]" else "",
                length(cats), paste(utils::head(cats, 6), collapse = ", "), if (length(cats) > 6) ", ..." else ""))
  }
  if (length(x$training)) {
    tr <- x$training
    fields <- intersect(c("max_epochs", "flow_epochs", "seed", "device", "active_latent_dims"), names(tr))
    if (length(fields)) cat("  training: ", paste0(fields, " ", vapply(tr[fields], function(v) format(v[[1]]), ""), collapse = ", "), "\n", sep = "")
  }
  invisible(x)
}

# A SAVEModel from: a SAVEModel, a path, or an object that RunSAVE stored a model in.
.resolve_model <- function(model, object = NULL, device = "auto", fun = "saveR") {
  if (is.null(model) && !is.null(object)) {
    path <- .stored_model_path(object)
    if (is.null(path)) {
      stop(sprintf("%s: this object holds no SAVE model; run RunSAVE() on it first or pass model = (a model directory or LoadSAVE() result).", fun), call. = FALSE)
    }
    model <- path
  }
  if (is.null(model)) stop(sprintf("%s: no model given; pass model = a model directory or a LoadSAVE() result.", fun), call. = FALSE)
  if (inherits(model, "SAVEModel")) { model$device <- device; return(model) }
  if (is.character(model)) { m <- LoadSAVE(model, device = device); return(m) }
  stop(sprintf("%s: 'model' must be a model directory path or a LoadSAVE() result, got class '%s'.", fun, class(model)[1]), call. = FALSE)
}

.stored_model_path <- function(object) {
  info <- if (.is_seurat(object)) object@tools$RunSAVE else if (.is_sce(object)) S4Vectors::metadata(object)$SAVE else NULL
  if (is.null(info)) return(NULL)
  info$model_dir
}
