# R side of the bad-input matrix (shared-tests/bad_inputs/cases.json): every case whose surfaces
# include "r" runs through saveR's functions and must give the expected error fragment (R error
# from the same pysave check) or succeed, and must leave the inputs unchanged.

spec <- jsonlite::fromJSON(shared_file("bad_inputs", "cases.json"), simplifyVector = FALSE)
inputs <- shared_file("bad_inputs", "inputs")
r_cases <- Filter(function(case) "r" %in% unlist(case$surfaces), spec$cases)

`%||%` <- function(a, b) if (is.null(a)) b else a

bad_tiny <- list(max_epochs = 1, flow_epochs = 1, batch_size = 64, hidden_size = 16, condition_dim = 16,
                 latent_dim = 16, latent_token_size = 8, n_encoder_layers = 1, n_decoder_layers = 1, n_heads = 2,
                 flow_hidden_size = 16, flow_layers = 1, flow_token_size = 8, flow_heads = 2,
                 flow_condition_dim = 16, n_blocks = 4, verbose = FALSE)

good_model_dir <- local({
  dir <- NULL
  function() {
    if (is.null(dir)) {
      sce <- ReadH5AD(file.path(inputs, "good.h5ad"))
      dir <<- file.path(tempfile("badinputs"), "good")
      do.call(RunSAVE, c(list(sce, conditions = unlist(spec$default_conditions), batch_key = "batch",
                              out_dir = dir), bad_tiny))
    }
    dir
  }
})

break_model <- function(kind) {
  path <- file.path(tempfile("broken"), kind)
  dir.create(path, recursive = TRUE)
  file.copy(list.files(good_model_dir(), full.names = TRUE), path)
  weights <- file.path(path, "weights.safetensors")
  config <- file.path(path, "config.json")
  switch(kind,
    missing_weights = file.remove(weights),
    corrupt_weights = { con <- file(weights, "r+b"); writeBin(as.raw(rep(255, 16)), con); close(con) },
    missing_config = file.remove(config),
    corrupt_config = writeLines('{"format_version": 1, "params": ', config),
    newer_format = { cfg <- jsonlite::read_json(config); cfg$format_version <- 99L
                     jsonlite::write_json(cfg, config, auto_unbox = TRUE, null = "null", digits = NA) },
    pickle_payload = {
      marker <- file.path(tempdir(), "PWNED")
      reticulate::py_run_string(sprintf(paste0(
        "import os, pickle\nclass _P:\n    def __reduce__(self):\n        return (os.system, ('touch %s',))\n",
        "pickle.dump(_P(), open('%s', 'wb'))\n"), marker, weights))
    })
  path
}

run_case <- function(case) {
  opts <- case$options
  src <- if (!is.null(case$input)) file.path(inputs, case$input) else NULL
  switch(case$action,
    train = {
      sce <- ReadH5AD(src)
      conds <- if (!is.null(case$conditions)) unlist(case$conditions) else unlist(spec$default_conditions)
      extra <- bad_tiny
      if (!is.null(opts$layer)) extra$assay <- opts$layer  # an AnnData layer is an SCE assay
      if (!is.null(opts$gene_embeddings)) {
        extra$gene_embeddings <- file.path(inputs, opts$gene_embeddings)
        if (!is.null(opts$n_blocks)) extra$n_blocks <- opts$n_blocks
      }
      for (key in names(opts$params)) extra[[key]] <- opts$params[[key]]  # engine names are RunSAVE's
      out <- do.call(RunSAVE, c(list(sce, conditions = conds, out_dir = file.path(tempfile("m"), "model")), extra))
      expect_equal(nrow(SingleCellExperiment::reducedDim(out, "SAVE")), ncol(sce))
    },
    generate = GenerateCells(good_model_dir(), n = 3, conditions = opts$set, output = "SingleCellExperiment",
                             guidance = if (is.null(opts$guidance)) NULL else as.numeric(opts$guidance)),
    transfer = do.call(TransferCells, c(list(ReadH5AD(src), model = good_model_dir(), target = opts$set),
                                        opts[intersect(c("via", "shift_bandwidth", "shift_neighbours"), names(opts))])),
    embed = {
      out <- RunSAVE(ReadH5AD(src), model = good_model_dir(), verbose = FALSE)
      latent <- SingleCellExperiment::reducedDim(out, "SAVE")
      if (!is.null(case$expect$same_as)) {
        ref <- RunSAVE(ReadH5AD(file.path(inputs, case$expect$same_as)), model = good_model_dir(), verbose = FALSE)
        expect_equal(unname(latent), unname(SingleCellExperiment::reducedDim(ref, "SAVE")), tolerance = 1e-5)
      }
    },
    evaluate = {
      gen <- if (!is.null(opts$generated)) ReadH5AD(file.path(inputs, opts$generated)) else NULL
      out <- file.path(tempfile("evaluate"), "eval")
      if (identical(case$output, "exists")) {
        dir.create(out, recursive = TRUE)
        writeLines("an earlier evaluation", file.path(out, "metrics.tsv"))
      }
      args <- list(ReadH5AD(src), gen, out_dir = out, umap = FALSE, groups = unlist(opts$groups),
                   reductions = sub("^X_", "", unlist(opts$embeddings)))  # R names reductions, not obsm keys
      for (key in intersect(c("task", "batch_key", "label_key", "condition_key", "n_pcs"), names(opts))) args[[key]] <- opts[[key]]
      on.exit({  # a refused evaluation writes nothing, and keeps an earlier one
        if (identical(case$output, "exists")) expect_equal(readLines(file.path(out, "metrics.tsv")), "an earlier evaluation")
        else expect_false(dir.exists(out))
      })
      do.call(EvaluateSAVE, args)
    },
    load = GenerateCells(LoadSAVE(break_model(case$model)), n = 2, conditions = list(), output = "SingleCellExperiment"),
    write = {
      sce <- ReadH5AD(src)
      out <- if (case$output == "is_input") src else tempfile(fileext = ".h5ad")
      if (case$output == "exists") writeLines("an earlier good file", out)
      WriteH5AD(sce, out)
      if (case$output == "exists") expect_equal(readLines(out), "an earlier good file")
    },
    stop("unknown action ", case$action))
}

before <- tools::md5sum(list.files(inputs, full.names = TRUE))

for (case in r_cases) {
  test_that(sprintf("bad input %s: %s", case$id, case$what), {
    skip_if_not(SAVEAvailable(), "pysave is not available")
    expected <- case$expect_r %||% case$expect
    if (!is.null(expected$error)) {
      expect_error(run_case(case), expected$error, fixed = TRUE)
    } else {
      expect_no_error(run_case(case))
    }
    expect_false(file.exists(file.path(tempdir(), "PWNED")))
  })
}

test_that("the bad-input matrix left every input unchanged", {
  expect_identical(tools::md5sum(list.files(inputs, full.names = TRUE)), before)
})

test_that("bad input (R only): a SingleCellExperiment with no colData", {
  skip_if_not(SAVEAvailable(), "pysave is not available")
  sce <- pbmc_small_sce()
  bare <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = SummarizedExperiment::assay(sce, "counts")))
  expect_error(do.call(RunSAVE, c(list(bare, conditions = "groups"), bad_tiny)), "'groups' not found in the cell metadata")
})

test_that("bad input (R only): factors with unused levels train on the levels in use", {
  skip_if_not(SAVEAvailable(), "pysave is not available")
  s <- pbmc_small_seurat()
  s$groups <- factor(s$groups, levels = c("g1", "g2", "never_used"))
  out <- do.call(RunSAVE, c(list(s, conditions = "groups"), bad_tiny))
  model <- LoadSAVE(out@tools$RunSAVE$model_dir)
  expect_identical(model$categories$groups, c("g1", "g2"))
  expect_error(GenerateCells(model, n = 2, conditions = list(groups = "never_used")), "unknown value")
})
