# Shared helpers: where the repository's shared-tests live, and a network small enough for CI.

shared_tests_dir <- function() {
  env <- Sys.getenv("SAVER_SHARED_TESTS")
  if (nzchar(env)) return(normalizePath(env))
  starts <- c(getwd(), tryCatch(find.package("saveR"), error = function(e) character(0)))
  for (start in starts) {
    dir <- normalizePath(start, mustWork = FALSE)
    repeat {
      cand <- file.path(dir, "shared-tests")
      if (file.exists(file.path(cand, "expectations", "pbmc_tiny.json"))) return(cand)
      if (identical(dirname(dir), dir)) break
      dir <- dirname(dir)
    }
  }
  stop("shared-tests/ not found: run the tests inside the repository or set SAVER_SHARED_TESTS=/path/to/shared-tests")
}

shared_file <- function(...) file.path(shared_tests_dir(), ...)

# Tiny network + short training: seconds on 2 CPU cores.
TINY <- list(max_epochs = 3, flow_epochs = 6, batch_size = 64, hidden_size = 32, condition_dim = 32,
             latent_dim = 16, latent_token_size = 8, n_encoder_layers = 1, n_decoder_layers = 1, n_heads = 2,
             flow_hidden_size = 32, flow_layers = 1, flow_token_size = 8, flow_heads = 2, n_blocks = 8,
             verbose = FALSE)

run_tiny <- function(object, ...) do.call(RunSAVE, c(list(object), list(...), TINY))

pbmc_small_seurat <- function() {
  e <- new.env()
  utils::data("pbmc_small", package = "SeuratObject", envir = e)
  suppressMessages(SeuratObject::UpdateSeuratObject(e$pbmc_small))
}

pbmc_small_sce <- function() {
  s <- pbmc_small_seurat()
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = SeuratObject::GetAssayData(s, slot = "counts"),
                  logcounts = SeuratObject::GetAssayData(s, slot = "data")),
    colData = S4Vectors::DataFrame(s@meta.data, check.names = FALSE),
    reducedDims = list(PCA = SeuratObject::Embeddings(s, "pca")))
}

tiny_model_dir <- function() shared_file("fixtures", "tiny_model")

# The fixture model as a model directory saved by an older pysave: a copy without the library-size
# statistics (config.json) and the per-condition statistics (weights.safetensors) pysave keeps since
# (edited by Python, so that both files stay pysave's own).
old_model_dir <- local({
  dir <- NULL
  function() {
    if (is.null(dir)) {
      dir <<- file.path(tempfile("old_model"), "tiny_model")
      dir.create(dir, recursive = TRUE)
      file.copy(list.files(tiny_model_dir(), full.names = TRUE), dir)
      reticulate::py_run_string(sprintf(paste(
        "import json", "from safetensors.torch import load_file, save_file", "d = r'%s'",
        "c = json.load(open(d + '/config.json'))", "del c['library_stats']", "open(d + '/config.json', 'w').write(json.dumps(c))",
        "t = load_file(d + '/weights.safetensors')",
        "save_file({k: v for k, v in t.items() if not k.startswith('extra.condition_latent_')}, d + '/weights.safetensors')",
        sep = "\n"), dir))
    }
    dir
  }
})

# A tiny model trained here on the shared fixture (conditions batch, cell_type), once per test run.
sampling_fit <- local({
  fit <- NULL
  function() {
    if (is.null(fit)) {
      fit <<- run_tiny(ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad")), conditions = c("batch", "cell_type"), seed = 1)
    }
    fit
  }
})
