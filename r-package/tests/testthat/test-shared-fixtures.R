# The same fixtures and expectations as shared-tests/test_shared_fixtures.py (pytest).

test_that("pbmc_tiny.h5ad reads exactly as the shared expectations say", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "pbmc_tiny.json"), simplifyVector = TRUE)
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  counts <- SummarizedExperiment::assay(sce, "counts")
  expect_s4_class(counts, "dgCMatrix")  # stays sparse
  expect_equal(dim(sce), c(exp$n_vars, exp$n_obs))
  expect_identical(colnames(sce)[1:3], exp$obs_names_first)
  expect_identical(colnames(sce)[ncol(sce)], exp$obs_names_last)
  expect_identical(rownames(sce), exp$var_names)
  for (key in names(exp$obs_categories)) {
    f <- sce[[key]]
    expect_true(is.factor(f))
    expect_identical(levels(f), exp$obs_categories[[key]])
    counts_by_level <- as.list(table(f))
    expect_identical(lapply(counts_by_level, as.integer), lapply(exp$obs_counts[[key]], as.integer))
  }
  expect_identical(length(counts@x), as.integer(exp$nnz))
  expect_identical(sum(counts), exp$total)
  expect_identical(unname(Matrix::rowSums(counts)), as.numeric(exp$column_sums))  # genes are rows in R
  expect_identical(unname(Matrix::colSums(counts))[1:5], as.numeric(exp$row_sums_first5))
  expect_true(all(counts@x == round(counts@x)))
  expect_true(is.integer(sce$n_counts))
})

test_that("the tiny model gives the latent and generated cells that Python gives", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = TRUE)
  tol <- exp$tolerance
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  emb <- SingleCellExperiment::reducedDim(RunSAVE(sce, model = tiny_model_dir(), verbose = FALSE), "SAVE")
  expect_identical(dim(emb), dim(exp$latent))
  expect_lt(max(abs(unname(emb) - exp$latent)), tol)
  spec <- exp$generate
  gen <- GenerateCells(tiny_model_dir(), n = spec$n_cells, conditions = spec$conditions, seed = spec$seed,
                       output = "SingleCellExperiment")
  expect_identical(rownames(gen), exp$genes)
  X <- unname(t(as.matrix(SummarizedExperiment::assay(gen, "logcounts"))))
  expect_identical(dim(X), dim(exp$generated_X))
  expect_lt(max(abs(X - exp$generated_X)), tol)
  Z <- unname(SingleCellExperiment::reducedDim(gen, "SAVE"))
  expect_identical(dim(Z), dim(exp$generated_latent))
  expect_lt(max(abs(Z - exp$generated_latent)), tol)
  expect_true(all(gen$cell_type == spec$conditions$cell_type))
})

test_that("calibrated generation of a combination seen in training is the one Python gives", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = TRUE)
  spec <- exp$generate_seen
  gen <- GenerateCells(tiny_model_dir(), n = spec$n_cells, conditions = spec$conditions, seed = spec$seed,
                       output = "SingleCellExperiment")
  X <- unname(t(as.matrix(SummarizedExperiment::assay(gen, "logcounts"))))
  expect_identical(dim(X), dim(exp$generated_seen_X))
  expect_lt(max(abs(X - exp$generated_seen_X)), exp$tolerance)
  prov <- S4Vectors::metadata(gen)$pysave
  expect_true(isTRUE(prov$calibrated))
  expect_equal(prov$calibrated_cells, spec$n_cells)
  for (key in c("spread_calibrated_cells", "spread_pilot_cells", "spread_min_cells", "spread_max_factor")) {
    expect_equal(prov[[key]], spec[[key]], info = key)
  }
  raw <- GenerateCells(tiny_model_dir(), n = spec$n_cells, conditions = spec$conditions, seed = spec$seed,
                       output = "SingleCellExperiment", calibrate = FALSE)
  expect_false(isTRUE(S4Vectors::metadata(raw)$pysave$calibrated))
  expect_gt(max(abs(unname(t(as.matrix(SummarizedExperiment::assay(raw, "logcounts")))) - X)), 10 * exp$tolerance)
  expect_error(GenerateCells(tiny_model_dir(), n = 2, conditions = spec$conditions, calibrate = "yes"),
               "calibrate must be TRUE or FALSE")
})

test_that("a combination never seen in training warns and names the shift_from Python names", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = FALSE)
  spec <- exp$generate_never_seen
  key <- names(spec$shift_from)[[1]]
  value <- spec$shift_from[[1]]
  hint <- sprintf('R shift_from = list(%s = "%s")', key, value)
  expect_warning(gen <- GenerateCells(tiny_model_dir(), n = spec$n_cells, conditions = spec$conditions, seed = spec$seed,
                                      output = "SingleCellExperiment"),
                 sprintf("never seen in training (%s)", spec$never_seen_combinations[[1]]), fixed = TRUE)
  expect_warning(GenerateCells(tiny_model_dir(), n = 2, conditions = spec$conditions), hint, fixed = TRUE)
  expect_identical(unlist(S4Vectors::metadata(gen)$pysave$never_seen_combinations), unlist(spec$never_seen_combinations))
  expect_no_warning(moved <- GenerateCells(tiny_model_dir(), n = spec$n_cells, conditions = spec$conditions,
                                           shift_from = spec$shift_from, output = "SingleCellExperiment"))
  expect_null(S4Vectors::metadata(moved)$pysave$never_seen_combinations)
})

test_that("the default guidance weighs a table's rows by their combination, as in Python", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = TRUE)
  spec <- exp$generate_mixed
  expect_warning(gen <- GenerateCells(tiny_model_dir(), conditions = spec$table, seed = spec$seed,
                                      output = "SingleCellExperiment"), "never seen in training")
  X <- unname(t(as.matrix(SummarizedExperiment::assay(gen, "logcounts"))))
  expect_identical(dim(X), dim(exp$generated_mixed_X))
  expect_lt(max(abs(X - exp$generated_mixed_X)), exp$tolerance)
  prov <- S4Vectors::metadata(gen)$pysave
  for (k in c("guidance", "guidance_seen", "guidance_never_seen", "guidance_never_seen_cells")) {
    expect_equal(prov[[k]], spec[[k]], label = k)
  }
  # a number is every cell's weight, recorded as given
  expect_warning(two <- GenerateCells(tiny_model_dir(), conditions = spec$table, seed = spec$seed, guidance = 2,
                                      output = "SingleCellExperiment"), "guidance=2 was given")
  expect_identical(S4Vectors::metadata(two)$pysave$guidance, 2)
  expect_null(S4Vectors::metadata(two)$pysave$guidance_seen)
})

test_that("batch correction averaged over all batches is the one Python gives", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = TRUE)
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  out <- RunSAVE(sce, model = tiny_model_dir(), corrected = TRUE, reference = exp$correct$reference, verbose = FALSE)
  X <- unname(t(as.matrix(SummarizedExperiment::assay(out, "save_corrected"))))
  expect_identical(dim(X), dim(exp$corrected_X))
  expect_lt(max(abs(X - exp$corrected_X)), exp$tolerance)
  # a vector of batches is averaged too; one batch twice is refused with the reason
  batches <- LoadSAVE(tiny_model_dir())$categories$batch
  two <- RunSAVE(sce, model = tiny_model_dir(), corrected = TRUE, reference = batches[1:2], verbose = FALSE)
  expect_false(isTRUE(all.equal(SummarizedExperiment::assay(two, "save_corrected"), SummarizedExperiment::assay(out, "save_corrected"))))
  expect_error(RunSAVE(sce, model = tiny_model_dir(), corrected = TRUE, reference = batches[c(1, 1)], verbose = FALSE),
               "more than once")
})

test_that("a transfer with expression = \"input_plus_change\" is the one Python gives", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = TRUE)
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  spec <- exp$transfer
  out <- TransferCells(sce, tiny_model_dir(), target = as.list(spec$target), via = spec$via, expression = spec$output)
  X <- unname(t(as.matrix(SummarizedExperiment::assay(out, "logcounts"))))
  expect_identical(dim(X), dim(exp$transferred_X))
  expect_lt(max(abs(X - exp$transferred_X)), exp$tolerance)
})

test_that("a transfer through the flow into never-seen combinations warns as Python does", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = FALSE)
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  spec <- exp$transfer_never_seen
  names <- unlist(spec$never_seen_combinations)
  expect_warning(out <- TransferCells(sce, tiny_model_dir(), target = spec$target, via = spec$via, steps = spec$n_steps),
                 sprintf("%d target combination(s) were never seen in training (%s)", length(names),
                         paste(names, collapse = "; ")), fixed = TRUE)
  expect_identical(unlist(S4Vectors::metadata(out)$pysave$never_seen_combinations), names)
  expect_no_warning(shifted <- TransferCells(sce, tiny_model_dir(), target = spec$target))
  expect_identical(S4Vectors::metadata(shifted)$pysave$via, "shift")
  expect_null(S4Vectors::metadata(shifted)$pysave$never_seen_combinations)
})

test_that("batch correction through the flow into never-seen combinations names correct's own default", {
  exp <- jsonlite::fromJSON(shared_file("expectations", "tiny_model.json"), simplifyVector = FALSE)
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  spec <- exp$transfer_never_seen  # the same cells moved to the same batch, here by correct()
  names <- unlist(spec$never_seen_combinations)
  warned <- character()
  withCallingHandlers(
    RunSAVE(sce, model = tiny_model_dir(), corrected = "flow", reference = spec$target$batch, verbose = FALSE),
    warning = function(w) {
      warned <<- c(warned, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  warned <- warned[grepl("never seen", warned, fixed = TRUE)]
  expect_length(warned, 1)
  expect_true(grepl(sprintf("(%s)", paste(names, collapse = "; ")), warned, fixed = TRUE))
  expect_true(grepl("via='decoder' (R RunSAVE(corrected = TRUE)", warned, fixed = TRUE))
  expect_false(grepl("via='auto'", warned, fixed = TRUE))
})

test_that("the package's example copies of the fixtures are the shared ones", {
  pairs <- list(c("pbmc_tiny.h5ad"), c("tiny_model", "config.json"), c("tiny_model", "weights.safetensors"))
  for (p in pairs) {
    a <- do.call(shared_file, as.list(c("fixtures", p)))
    b <- do.call(system.file, as.list(c("extdata", p, package = "saveR")))
    expect_identical(unname(tools::md5sum(a)), unname(tools::md5sum(b)), label = paste(p, collapse = "/"))
  }
})

test_that("posterior collapse becomes an R warning and is recorded, as in Python", {
  spec <- jsonlite::fromJSON(shared_file("expectations", "posterior_collapse.json"), simplifyVector = TRUE)
  run <- function(kl) {
    sce <- ReadH5AD(shared_file("fixtures", spec$fixture))
    do.call(RunSAVE, c(list(sce, conditions = spec$conditions, kl_weight = kl, verbose = FALSE), spec$params, spec$train))
  }
  expect_warning(collapsed <- run(spec$collapsing_kl_weight), paste0(spec$warning, ".*lower kl_weight"))
  expect_lte(S4Vectors::metadata(collapsed)$SAVE$training$active_latent_dims, spec$max_active_when_collapsed)
  expect_warning(healthy <- run(spec$healthy_kl_weight), NA)
  expect_gte(S4Vectors::metadata(healthy)$SAVE$training$active_latent_dims, spec$min_active_when_healthy)
})
