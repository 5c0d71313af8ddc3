test_that("GenerateCells returns a Seurat object with n cells and their conditions", {
  gen <- GenerateCells(tiny_model_dir(), n = 12, conditions = list(cell_type = "NK"), seed = 1)
  expect_s4_class(gen, "Seurat")
  expect_identical(ncol(gen), 12L)
  expect_identical(nrow(gen), 40L)
  expect_true(is.factor(gen$cell_type))
  expect_identical(levels(gen$cell_type), LoadSAVE(tiny_model_dir())$categories$cell_type)
  expect_true(all(gen$cell_type == "NK"))
  expect_true(all(is.na(gen$batch)))  # masked
  expect_identical(dim(SeuratObject::Embeddings(gen, "save")), c(12L, 16L))
  x <- SeuratObject::GetAssayData(gen, slot = "data")
  expect_true(all(is.finite(x)) && all(x >= 0))
  expect_identical(gen@misc$pysave$kind, "generated")
  # same seed, same cells
  again <- GenerateCells(LoadSAVE(tiny_model_dir()), n = 12, conditions = list(cell_type = "NK"), seed = 1)
  expect_identical(SeuratObject::GetAssayData(again, slot = "data"), x)
})

test_that("several combinations at once via a data.frame, SCE output", {
  plan <- data.frame(cell_type = c("B", "T_CD4", "NK"), batch = c("10x_5prime", NA, "10x_3prime_v1"))
  gen <- GenerateCells(tiny_model_dir(), n = 4, conditions = plan, output = "SingleCellExperiment")
  expect_s4_class(gen, "SingleCellExperiment")
  expect_identical(ncol(gen), 12L)
  expect_identical(as.vector(table(gen$cell_type)[c("B", "T_CD4", "NK")]), c(4L, 4L, 4L))
  expect_identical(sum(is.na(gen$batch)), 4L)
  expect_true("SAVE" %in% SingleCellExperiment::reducedDimNames(gen))
  plan$n_cells <- c(1, 0, 2)
  expect_identical(ncol(GenerateCells(tiny_model_dir(), conditions = plan, output = "SingleCellExperiment")), 3L)
})

test_that("GenerateCells from an object RunSAVE was run on matches the object's class", {
  sce <- RunSAVE(ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad")), model = tiny_model_dir(), verbose = FALSE)
  gen <- GenerateCells(sce, n = 5, conditions = list(batch = "10x_5prime"))
  expect_s4_class(gen, "SingleCellExperiment")
  expect_identical(ncol(gen), 5L)
})

test_that("GenerateCells errors name the problem", {
  expect_error(GenerateCells(tiny_model_dir(), n = 3, conditions = list(cell_type = "Platelet")),
               "unknown value.*'Platelet'.*for condition 'cell_type'; the model knows: B, DC")
  expect_error(GenerateCells(tiny_model_dir(), n = 3, conditions = list(celltype = "B")),
               "'celltype' is not a condition of this model; its conditions are: batch, cell_type")
  expect_error(GenerateCells(tiny_model_dir(), n = 0), "positive whole number")
  expect_error(GenerateCells(list(a = 1), n = 3), "first argument must be")
  expect_error(GenerateCells(pbmc_small_seurat(), n = 3), "holds no SAVE model; run RunSAVE\\(\\) on it first")
  expect_error(GenerateCells(tempfile(), n = 3), "does not exist")
  expect_error(GenerateCells(tiny_model_dir(), conditions = list(cell_type = c("B", "NK"))), "pass a data.frame")
})

test_that("GenerateCells expression = \"sample\" (default) gives sampled counts, \"mean\" the decoder mean", {
  fit <- sampling_fit()
  args <- list(fit, n = 40, conditions = list(cell_type = "B"), seed = 2)
  smp <- do.call(GenerateCells, args)
  avg <- do.call(GenerateCells, c(args, expression = "mean"))
  expect_identical(S4Vectors::metadata(smp)$pysave$output, "sample")
  expect_identical(S4Vectors::metadata(avg)$pysave$output, "mean")
  xs <- as.matrix(SummarizedExperiment::assay(smp, "logcounts"))
  xm <- as.matrix(SummarizedExperiment::assay(avg, "logcounts"))
  expect_identical(dim(xs), dim(xm))
  # sampled cells have zeros and count noise; the decoder mean is smooth (no exact zeros)
  expect_identical(sum(xm == 0), 0L)
  expect_gt(mean(xs == 0), 0.02)
  expect_gt(max(abs(xs - xm)), 0.1)
  # the output kind only changes the last step: the same latents
  expect_equal(SingleCellExperiment::reducedDim(smp, "SAVE"), SingleCellExperiment::reducedDim(avg, "SAVE"))
  # the default is "sample"; explicit "sample" is the same, and the same seed gives the same cells
  expect_identical(as.matrix(SummarizedExperiment::assay(do.call(GenerateCells, c(args, expression = "sample")), "logcounts")), xs)
})

test_that("GenerateCells on a model without library-size statistics: default falls back to mean, sample errors", {
  gen <- GenerateCells(old_model_dir(), n = 3, conditions = list(cell_type = "B"), output = "SingleCellExperiment")
  expect_identical(S4Vectors::metadata(gen)$pysave$output, "mean")
  expect_error(GenerateCells(old_model_dir(), n = 3, conditions = list(cell_type = "B"), expression = "sample"),
               "GenerateCells: this model directory has no library-size statistics.*use expression = \"mean\"")
})

test_that("GenerateCells rejects bad expression / guidance / steps / seed with the function's name", {
  expect_error(GenerateCells(tiny_model_dir(), n = 3, expression = "median"),
               "GenerateCells: expression must be one of \"sample\" or \"mean\"; got \"median\"", fixed = TRUE)
  expect_error(GenerateCells(tiny_model_dir(), n = 3, expression = c("mean", "sample")), "GenerateCells: expression must be one of")
  expect_error(GenerateCells(tiny_model_dir(), n = 3, steps = 0), "GenerateCells: steps must be a whole number >= 1; got 0")
  expect_error(GenerateCells(tiny_model_dir(), n = 3, seed = 1.5), "GenerateCells: seed must be a whole number >= 0")
  expect_error(GenerateCells(tiny_model_dir(), n = 3, guidance = "2"), "GenerateCells: guidance must be one finite number")
  expect_error(GenerateCells(tiny_model_dir(), n = 3, guidance = NaN),
               "guidance must be one finite number; got NaN. Or leave it NULL (the default)", fixed = TRUE)
  expect_error(GenerateCells(tiny_model_dir(), n = 3, solver = "heun"),
               "GenerateCells: solver must be one of \"euler\" or \"midpoint\" or \"rk4\" or \"dopri5\"; got \"heun\"", fixed = TRUE)
})

test_that("GenerateCells passes every pysave solver through and records it", {
  solvers <- reticulate::import("pysave.flow")$SOLVERS
  expect_identical(unlist(solvers), c("euler", "midpoint", "rk4", "dopri5"))
  for (solver in c("midpoint", "rk4")) {
    gen <- GenerateCells(tiny_model_dir(), n = 3, conditions = list(cell_type = "B"), steps = 4, solver = solver,
                         output = "SingleCellExperiment")
    expect_identical(S4Vectors::metadata(gen)$pysave$solver, solver)
    expect_true(all(is.finite(as.matrix(SummarizedExperiment::assay(gen, "logcounts")))))
  }
})

test_that("GenerateCells and TransferCells sample in bf16 on request and record it", {
  gen <- GenerateCells(tiny_model_dir(), n = 4, conditions = list(cell_type = "B"), precision = "bf16",
                       output = "SingleCellExperiment")
  expect_identical(S4Vectors::metadata(gen)$pysave$precision, "bf16")
  expect_true(all(is.finite(as.matrix(SummarizedExperiment::assay(gen, "logcounts")))))
  full <- GenerateCells(tiny_model_dir(), n = 4, conditions = list(cell_type = "B"), output = "SingleCellExperiment")
  expect_identical(S4Vectors::metadata(full)$pysave$precision, "32")  # auto on the CPU
  expect_error(GenerateCells(tiny_model_dir(), n = 3, precision = "fp16"),
               "GenerateCells: precision must be one of \"auto\" or \"32\" or \"bf16\"; got \"fp16\"", fixed = TRUE)
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  moved <- TransferCells(sce[, 1:5], tiny_model_dir(), target = list(batch = "10x_5prime"), precision = "bf16")
  expect_identical(S4Vectors::metadata(moved)$pysave$precision, "bf16")
  expect_error(TransferCells(sce, tiny_model_dir(), target = list(batch = "10x_5prime"), precision = 16),
               "TransferCells: precision must be one of", fixed = TRUE)
})

test_that("GenerateCells shift_from samples under other values, then adds the latent shift, and records it", {
  fit <- sampling_fit()
  args <- list(fit, n = 6, seed = 2L, guidance = 1, expression = "mean", output = "SingleCellExperiment")
  base <- do.call(GenerateCells, c(args, list(conditions = list(batch = "10x_3prime_v2", cell_type = "T_CD4"))))
  moved <- do.call(GenerateCells, c(args, list(conditions = list(batch = "10x_5prime", cell_type = "T_CD4"),
                                               shift_from = list(batch = "10x_3prime_v2"))))
  info <- S4Vectors::metadata(moved)$pysave
  expect_identical(info$shift_from$batch, "10x_3prime_v2")
  # pbmc_tiny: Mono_CD14, T_CD4 and T_CD8 have >= 3 cells in both batches
  expect_identical(info$shift_strata[["batch=10x_3prime_v2 -> batch=10x_5prime"]], 3L)
  expect_equal(info$shift_bandwidth, 0.5)
  expect_equal(info$shift_neighbours, 30)
  # the same flow samples (same seed), each moved by its own weighted shift
  d <- SingleCellExperiment::reducedDim(moved, "SAVE") - SingleCellExperiment::reducedDim(base, "SAVE")
  expect_gt(max(abs(d)), 1e-3)
  expect_true(all(as.character(moved$batch) == "10x_5prime"))
  expect_error(do.call(GenerateCells, c(args, list(conditions = list(batch = "10x_5prime"), shift_from = "10x_3prime_v2"))),
               "GenerateCells: shift_from must be a named list", fixed = TRUE)
  expect_error(do.call(GenerateCells, c(args, list(conditions = list(batch = "10x_5prime"), shift_from = list(tissue = "x")))),
               "GenerateCells: 'tissue' is not a condition of this model", fixed = TRUE)
  expect_error(do.call(GenerateCells, c(args, list(conditions = list(cell_type = "T_CD4"), shift_from = list(batch = "10x_3prime_v2")))),
               "would be masked")
  expect_error(do.call(GenerateCells, c(args, list(conditions = list(batch = "10x_5prime"), shift_from = list(batch = "10x_3prime_v2"),
                                                   shift_bandwidth = -1))),
               "GenerateCells: shift_bandwidth must be a positive number", fixed = TRUE)
  expect_error(do.call(GenerateCells, c(args, list(conditions = list(batch = "10x_5prime"), shift_from = list(batch = "10x_3prime_v2"),
                                                   shift_neighbours = 2.5))),
               "GenerateCells: shift_neighbours must be a whole number >= 0", fixed = TRUE)
})

test_that("pysave's warnings reach R as warnings (guidance on a model trained without masking)", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  fit <- run_tiny(sce, conditions = c("batch", "cell_type"), mask_prob = 0, mask_all_prob = 0, seed = 3)
  expect_warning(GenerateCells(fit, n = 5, conditions = list(cell_type = "B"), guidance = 2, expression = "mean"),
                 "trained with mask_prob=0.*guidance=1")
  expect_warning(GenerateCells(fit, n = 5, conditions = list(cell_type = "B"), guidance = 1, expression = "mean"), NA)
})

test_that("leaving a condition masked warns on a model whose VAE never saw a mask (vae_mask_prob = 0)", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  fit <- run_tiny(sce, conditions = c("batch", "cell_type"), vae_mask_prob = 0, seed = 5)
  expect_warning(GenerateCells(fit, n = 3, conditions = list(cell_type = "B"), guidance = 1, expression = "mean"),
                 "vae_mask_prob=0.*'batch'.*is masked")
  batch <- as.character(SummarizedExperiment::colData(sce)$batch[1])
  expect_warning(GenerateCells(fit, n = 3, conditions = list(cell_type = "B", batch = batch), guidance = 1, expression = "mean"), NA)
})

test_that("a pysave warning is raised again on every call that causes it", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  fit <- run_tiny(sce, conditions = c("batch", "cell_type"), mask_prob = 0, mask_all_prob = 0, seed = 4)
  for (i in 1:2) {
    expect_warning(GenerateCells(fit, n = 3, conditions = list(cell_type = "B"), guidance = 2, expression = "mean"), "mask_prob=0")
  }
})

test_that("GenerateCells(torch_compile = TRUE) gives the same cells up to rounding and records it", {
  plain <- GenerateCells(tiny_model_dir(), n = 20, conditions = list(cell_type = "NK"), seed = 2, expression = "mean",
                         output = "SingleCellExperiment")
  fast <- GenerateCells(tiny_model_dir(), n = 20, conditions = list(cell_type = "NK"), seed = 2, expression = "mean",
                        output = "SingleCellExperiment", torch_compile = TRUE)
  expect_true(isTRUE(S4Vectors::metadata(fast)$pysave$torch_compile))
  expect_false(isTRUE(S4Vectors::metadata(plain)$pysave$torch_compile))
  a <- as.matrix(SummarizedExperiment::assay(plain, "logcounts"))
  b <- as.matrix(SummarizedExperiment::assay(fast, "logcounts"))
  expect_lt(max(abs(a - b)), 1e-3)
  expect_error(GenerateCells(tiny_model_dir(), n = 2, conditions = list(cell_type = "NK"), torch_compile = NA),
               "torch_compile must be TRUE or FALSE")
})
