test_that("TransferCells moves cells to another batch and keeps the source", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  moved <- TransferCells(sce, tiny_model_dir(), target = list(batch = "10x_5prime"))
  expect_s4_class(moved, "SingleCellExperiment")
  expect_identical(colnames(moved), colnames(sce))
  expect_true(all(moved$batch == "10x_5prime"))
  expect_identical(as.character(moved$batch_source), as.character(sce$batch))
  expect_identical(moved$cell_type, sce$cell_type)
  expect_identical(dim(SingleCellExperiment::reducedDim(moved, "SAVE")), c(60L, 16L))
  expect_identical(S4Vectors::metadata(moved)$pysave$kind, "transferred")
  # Seurat in, Seurat out; NA masks the batch
  s <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"), output = "Seurat")
  masked <- TransferCells(s, LoadSAVE(tiny_model_dir()), target = list(batch = NA))
  expect_s4_class(masked, "Seurat")
  expect_true(all(is.na(masked$batch)))
})

test_that("TransferCells errors name the problem", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  expect_error(TransferCells(sce, tiny_model_dir(), target = list(batch = "10x_v9")), "unknown value.*'10x_v9'.*for condition 'batch'")
  expect_error(TransferCells(sce, tiny_model_dir(), target = list(stim = "STIM")), "'stim' is not a condition of this model")
  expect_error(TransferCells(sce, target = list(batch = "10x_5prime")), "holds no SAVE model")
  expect_error(TransferCells("x", tiny_model_dir()), "needs a Seurat \\(v4\\) or SingleCellExperiment")
  expect_error(TransferCells(sce, tiny_model_dir(), target = "10x_5prime"), "named list")
})

test_that("TransferCells via = \"flow\" moves the latent and gives other values than via = \"decoder\"", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  target <- list(batch = "10x_5prime")
  dec <- TransferCells(sce, tiny_model_dir(), target = target, via = "decoder")
  flow <- TransferCells(sce, tiny_model_dir(), target = target, via = "flow", steps = 10)
  expect_identical(S4Vectors::metadata(dec)$pysave$via, "decoder")
  expect_identical(S4Vectors::metadata(dec)$pysave$output, "mean")
  info <- S4Vectors::metadata(flow)$pysave
  expect_identical(info$via, "flow")
  expect_identical(info$n_steps, 10L)
  expect_identical(info$guidance, 2)
  expect_identical(info$output, "mean")
  xd <- as.matrix(SummarizedExperiment::assay(dec, "logcounts"))
  xf <- as.matrix(SummarizedExperiment::assay(flow, "logcounts"))
  expect_identical(dim(xf), dim(xd))
  expect_true(all(is.finite(xf)))
  expect_gt(max(abs(xf - xd)), 0.05)
  expect_gt(max(abs(SingleCellExperiment::reducedDim(flow, "SAVE") - SingleCellExperiment::reducedDim(dec, "SAVE"))), 0.01)
  expect_true(all(flow$batch == "10x_5prime"))
  # guidance is passed on (it changes the transport) and the flow is deterministic
  other <- TransferCells(sce, tiny_model_dir(), target = target, via = "flow", steps = 10, guidance = 1)
  expect_identical(S4Vectors::metadata(other)$pysave$guidance, 1)
  expect_gt(max(abs(as.matrix(SummarizedExperiment::assay(other, "logcounts")) - xf)), 1e-4)
  again <- TransferCells(sce, tiny_model_dir(), target = target, via = "flow", steps = 10)
  expect_equal(as.matrix(SummarizedExperiment::assay(again, "logcounts")), xf, tolerance = 1e-6)
})

test_that("TransferCells expression = \"sample\" samples counts (seeded) from a model that can", {
  fit <- sampling_fit()
  target <- list(batch = "10x_5prime")
  avg <- TransferCells(fit, target = target)
  smp <- TransferCells(fit, target = target, expression = "sample", seed = 4)
  expect_identical(S4Vectors::metadata(smp)$pysave$output, "sample")
  expect_identical(S4Vectors::metadata(smp)$pysave$seed, 4L)
  xs <- as.matrix(SummarizedExperiment::assay(smp, "logcounts"))
  xm <- as.matrix(SummarizedExperiment::assay(avg, "logcounts"))
  expect_identical(sum(xm == 0), 0L)
  expect_gt(sum(xs == 0), sum(xm == 0))
  expect_identical(as.matrix(SummarizedExperiment::assay(
    TransferCells(fit, target = target, expression = "sample", seed = 4), "logcounts")), xs)
  expect_false(identical(as.matrix(SummarizedExperiment::assay(
    TransferCells(fit, target = target, expression = "sample", seed = 5), "logcounts")), xs))
})

test_that("TransferCells rejects bad expression / via / guidance / steps / seed with the function's name", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  target <- list(batch = "10x_5prime")
  expect_error(TransferCells(sce, tiny_model_dir(), target = target, via = "flux"),
               "TransferCells: via must be one of \"auto\" or \"shift\" or \"flow\" or \"decoder\"; got \"flux\"", fixed = TRUE)
  expect_error(TransferCells(sce, tiny_model_dir(), target = target, via = NA), "TransferCells: via must be one of")
  # the strings TransferCells accepts are exactly pysave's transfer paths
  expect_setequal(unlist(reticulate::import("pysave.model")$TRANSFER_VIAS), eval(formals(TransferCells)$via))
  expect_error(TransferCells(sce, tiny_model_dir(), target = target, expression = "counts"),
               "TransferCells: expression must be one of \"mean\" or \"sample\" or \"input_plus_change\"; got \"counts\"", fixed = TRUE)
  expect_error(TransferCells(sce, old_model_dir(), target = target, expression = "sample"),
               "TransferCells: this model directory has no library-size statistics.*use expression = \"mean\"")
  expect_error(TransferCells(sce, tiny_model_dir(), target = target, via = "flow", steps = -1),
               "TransferCells: steps must be a whole number >= 1; got -1")
  expect_error(TransferCells(sce, tiny_model_dir(), target = target, guidance = NA_real_),
               "TransferCells: guidance must be one finite number")
  expect_error(TransferCells(sce, tiny_model_dir(), target = target, seed = -3), "TransferCells: seed must be a whole number >= 0")
})

test_that("TransferCells' default via = \"auto\" takes the shift where it can, else the flow, and says which", {
  fit <- sampling_fit()  # trained here: it has the shift's per-condition statistics
  target <- list(batch = "10x_5prime")
  auto <- TransferCells(fit, target = target)
  info <- S4Vectors::metadata(auto)$pysave
  expect_identical(info$via, "shift")
  expect_identical(info$via_requested, "auto")
  expect_match(info$via_reason, "training cells on both sides")
  shf <- TransferCells(fit, target = target, via = "shift")
  expect_identical(as.matrix(SummarizedExperiment::assay(auto, "logcounts")),
                   as.matrix(SummarizedExperiment::assay(shf, "logcounts")))
  masked <- TransferCells(fit, target = list(batch = NA), steps = 5)
  expect_identical(S4Vectors::metadata(masked)$pysave$via, "flow")
  expect_match(S4Vectors::metadata(masked)$pysave$via_reason, "masked")
  expect_error(TransferCells(fit, target = list(batch = NA), via = "shift"), "TransferCells: .*masked")
  # A model saved without those statistics: "auto" takes the flow, and says why.
  old <- TransferCells(ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad")), old_model_dir(), target = target, steps = 5)
  expect_identical(S4Vectors::metadata(old)$pysave$via, "flow")
  expect_match(S4Vectors::metadata(old)$pysave$via_reason, "no per-condition latent means")
})

test_that("TransferCells via = \"shift\" adds the training cells' latent shift and records its strata", {
  fit <- sampling_fit()
  target <- list(batch = "10x_5prime")
  dec <- TransferCells(fit, target = target, via = "decoder")
  shf <- TransferCells(fit, target = target, via = "shift", shift_neighbours = 0)  # the kernel over stratum means
  info <- S4Vectors::metadata(shf)$pysave
  expect_identical(info$via, "shift")
  # strata = cell types with >= 3 cells in both batches (pbmc_tiny: T_CD4 for v1; Mono_CD14, T_CD4, T_CD8 for v2)
  expect_identical(info$shift_strata[["batch=10x_3prime_v1 -> batch=10x_5prime"]], 1L)
  expect_identical(info$shift_strata[["batch=10x_3prime_v2 -> batch=10x_5prime"]], 3L)
  d <- SingleCellExperiment::reducedDim(shf, "SAVE") - SingleCellExperiment::reducedDim(dec, "SAVE")
  src <- as.character(shf$batch_source)
  expect_lt(max(abs(d[src == "10x_5prime", ])), 1e-6)  # the target's own cells stay
  v1 <- d[src == "10x_3prime_v1", , drop = FALSE]
  expect_lt(max(abs(sweep(v1, 2, v1[1, ]))), 1e-5)  # one stratum: the same shift for every cell
  expect_gt(max(abs(v1[1, ])), 1e-3)
  v2 <- d[src == "10x_3prime_v2", , drop = FALSE]
  expect_gt(max(abs(sweep(v2, 2, v2[1, ]))), 1e-4)  # three strata, weighted by each cell's closeness to them
  expect_equal(info$shift_bandwidth, 0.5)
  expect_equal(info$shift_neighbours, 0)
  expect_match(info$shift_weighed_in, "^[0-9]+ expression PCs$")  # closeness measured in expression
  # The default: local shifts, each cell from its 30 nearest training cells' transport displacements.
  loc <- TransferCells(fit, target = target, via = "shift")
  expect_equal(S4Vectors::metadata(loc)$pysave$shift_neighbours, 30)
  expect_identical(S4Vectors::metadata(loc)$pysave$shift_strata, info$shift_strata)
  dl <- SingleCellExperiment::reducedDim(loc, "SAVE") - SingleCellExperiment::reducedDim(dec, "SAVE")
  expect_lt(max(abs(dl[src == "10x_5prime", ])), 1e-6)
  expect_gt(max(abs(dl - d)), 1e-4)  # not the kernel's shift
  expect_error(TransferCells(fit, target = target, via = "shift", shift_neighbours = -1),
               "TransferCells: shift_neighbours must be a whole number >= 0", fixed = TRUE)
  # An infinite width weighs the three strata equally: every v2 cell takes the same shift.
  flat <- TransferCells(fit, target = target, via = "shift", shift_bandwidth = Inf, shift_neighbours = 0)
  expect_equal(S4Vectors::metadata(flat)$pysave$shift_bandwidth, Inf)
  e2 <- (SingleCellExperiment::reducedDim(flat, "SAVE") - SingleCellExperiment::reducedDim(dec, "SAVE"))[src == "10x_3prime_v2", , drop = FALSE]
  expect_lt(max(abs(sweep(e2, 2, e2[1, ]))), 1e-5)
  expect_error(TransferCells(fit, target = target, via = "shift", shift_bandwidth = 0),
               "TransferCells: shift_bandwidth must be a positive number", fixed = TRUE)
  expect_error(TransferCells(fit, target = target, via = "shift", shift_bandwidth = "wide"),
               "TransferCells: shift_bandwidth must be a positive number", fixed = TRUE)
  expect_true(all(shf$batch == "10x_5prime"))
  expect_error(TransferCells(fit, target = list(batch = NA), via = "shift"), "TransferCells: the latent shift moves cells to a given value")
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  expect_error(TransferCells(sce, old_model_dir(), target = target, via = "shift"),
               "TransferCells: this model directory has no per-condition latent means")
})

test_that("TransferCells expression = \"input_plus_change\" adds the decoded change to the cells' own expression", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  cells <- sce[, sce$batch == "10x_3prime_v2"]
  counts <- as.matrix(SummarizedExperiment::assay(cells, "counts"))
  own <- log1p(sweep(counts, 2, colSums(counts), "/") * 1e4)
  moved <- TransferCells(cells, tiny_model_dir(), target = list(batch = "10x_5prime"), via = "decoder")
  home <- TransferCells(cells, tiny_model_dir(), target = list(batch = "10x_3prime_v2"), via = "decoder")
  plus <- TransferCells(cells, tiny_model_dir(), target = list(batch = "10x_5prime"), via = "decoder",
                        expression = "input_plus_change")
  expect_identical(S4Vectors::metadata(plus)$pysave$output, "input_plus_change")
  got <- as.matrix(SummarizedExperiment::assay(plus, "logcounts"))
  want <- pmax(own + as.matrix(SummarizedExperiment::assay(moved, "logcounts")) -
                 as.matrix(SummarizedExperiment::assay(home, "logcounts")), 0)
  expect_equal(unname(got), unname(want), tolerance = 1e-4)
  expect_true(all(plus$batch == "10x_5prime"))
})
