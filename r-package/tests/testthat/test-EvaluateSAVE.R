# EvaluateSAVE() runs pysave.evaluate(): the same numbers from objects and from .h5ad files,
# the files of `pysave evaluate`, and the errors for each task's missing inputs.

bundled_pbmc <- function() {
  py <- saveR:::.py()
  ReadH5AD(file.path(dirname(reticulate::py_to_r(reticulate::py_get_attr(py$pysave, "__file__"))), "datasets", "pbmc_3tech_1200.h5ad"))
}

test_that("EvaluateSAVE scores generated cells per group, the same from objects and from files", {
  fit <- sampling_fit()
  real <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  gen <- GenerateCells(fit, n = 20, conditions = data.frame(cell_type = c("B", "T_CD4")), seed = 1)
  real <- real[, real$cell_type %in% c("B", "T_CD4")]
  out <- file.path(tempfile("eval"), "gen")
  scores <- EvaluateSAVE(real, gen, groups = "cell_type", n_hvg = 30L, out_dir = out, umap = FALSE)
  expect_s3_class(scores, "data.frame")
  expect_setequal(rownames(scores), c("B", "T_CD4"))
  expect_true(all(c("W1", "W2", "MMD", "mean_r2", "spread") %in% names(scores)))
  # the spread needs 10 cells on each side (pysave.metrics.MIN_SPREAD_CELLS); NA below that
  expect_identical(is.na(scores$spread), scores$n_real < 10 | scores$n_generated < 10)
  expect_true(all(is.na(scores$spread) | scores$spread > 0))
  expect_true(all(is.finite(scores$W1) & scores$W1 > 0))
  summary <- attr(scores, "summary")
  expect_identical(summary$protocol$name, "generation_fidelity")
  expect_identical(summary$scored_output, "sample")
  expect_true(file.exists(file.path(out, "metrics.tsv")) && file.exists(file.path(out, "summary.json")))
  expect_identical(attr(scores, "files"), "metrics.png")
  tsv <- utils::read.delim(file.path(out, "metrics.tsv"), row.names = 1, check.names = FALSE)
  expect_equal(tsv[rownames(scores), "W1"], scores$W1, tolerance = 1e-6)
  # the same cells as .h5ad files give the same table; nothing is written without out_dir
  dir.create(files <- tempfile("h5"))
  WriteH5AD(real, file.path(files, "real.h5ad"))
  WriteH5AD(gen, file.path(files, "gen.h5ad"), assay = "logcounts")
  again <- EvaluateSAVE(file.path(files, "real.h5ad"), file.path(files, "gen.h5ad"), groups = "cell_type", n_hvg = 30L)
  expect_equal(again[rownames(scores), "W1"], scores$W1, tolerance = 1e-6)
  expect_equal(again[rownames(scores), "MMD"], scores$MMD, tolerance = 1e-6)
  expect_identical(attr(again, "files"), character(0))
  expect_error(EvaluateSAVE(real, gen, groups = "cell_type", out_dir = out), "already exists")
})

test_that("EvaluateSAVE with floor cells adds the noise floor and the per-group Gaussian baseline", {
  fit <- sampling_fit()
  real <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  real <- real[, real$cell_type %in% c("B", "T_CD4")]
  half <- seq_len(ncol(real)) %% 2 == 0
  gen <- GenerateCells(fit, n = 20, conditions = data.frame(cell_type = c("B", "T_CD4")), seed = 1)
  scores <- EvaluateSAVE(real[, half], gen, groups = "cell_type", floor = real[, !half], n_hvg = 30L, umap = FALSE)
  expect_true(all(c("floor_W1", "floor_sized_W1", "gaussian_W1", "gaussian_MMD", "gaussian_spread") %in% names(scores)))
  expect_true(all(is.finite(scores$gaussian_W1) & scores$gaussian_W1 > 0))
  expect_match(attr(scores, "summary")$protocol$gaussian, "Gaussian")
  expect_true(is.finite(attr(scores, "summary")$mean$gaussian_W1))
  again <- EvaluateSAVE(real[, half], gen, groups = "cell_type", floor = real[, !half], n_hvg = 30L, umap = FALSE)
  expect_identical(again$gaussian_MMD, scores$gaussian_MMD)  # seeded
})

test_that("EvaluateSAVE reads a summary whose mean spread was not computed (every group under 10 cells)", {
  fit <- sampling_fit()
  real <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  real <- real[, real$cell_type %in% c("B", "T_CD4")]
  gen <- GenerateCells(fit, n = 5, conditions = data.frame(cell_type = c("B", "T_CD4")), seed = 1)
  out <- file.path(tempfile("eval"), "few")
  scores <- EvaluateSAVE(real, gen, groups = "cell_type", n_hvg = 30L, out_dir = out, umap = FALSE)
  expect_true(all(is.na(scores$spread)))
  summary <- attr(scores, "summary")
  expect_true(is.na(summary$mean$spread) && is.finite(summary$mean$W1))
  # summary.json is strict JSON (null, not NaN), so jsonlite and other readers take it
  expect_null(jsonlite::fromJSON(file.path(out, "summary.json"), simplifyVector = FALSE)$mean$spread)
})

test_that("EvaluateSAVE scores a perturbation per cell type and integration with scIB", {
  pbmc <- bundled_pbmc()
  pbmc$condition <- ifelse(pbmc$batch == "10x_3prime_v2", "control", ifelse(pbmc$batch == "10x_5prime", "stimulated", "other"))
  real <- pbmc[, pbmc$condition != "other"]
  predicted <- real[, real$condition == "stimulated"]
  pert <- EvaluateSAVE(real, predicted, task = "perturbation", n_degs = 20L)
  expect_true(all(c("B", "T_CD4") %in% rownames(pert)))
  expect_true(all(pert$degs_r2 > pert$control_degs_r2))  # the real stimulated cells beat the control baseline
  expect_identical(attr(pert, "summary")$protocol$name, "perturbation_scgen")
  # integration: an embedding that knows the cell types scores above one that knows the batches
  set.seed(0)
  types <- model.matrix(~ cell_type - 1, data = data.frame(cell_type = factor(pbmc$cell_type)))
  batches <- model.matrix(~ batch - 1, data = data.frame(batch = factor(pbmc$batch)))
  noise <- function(m) unname(m + matrix(rnorm(length(m), sd = 0.1), nrow(m)))
  SingleCellExperiment::reducedDim(pbmc, "ideal") <- noise(cbind(types, types))
  SingleCellExperiment::reducedDim(pbmc, "batchy") <- noise(cbind(batches, batches, batches))
  bat <- EvaluateSAVE(pbmc, task = "batch", batch_key = "batch", label_key = "cell_type", reductions = c("ideal", "batchy"),
                      umap = FALSE)
  expect_gt(bat["X_ideal", "Total"], bat["X_batchy", "Total"])
  expect_identical(attr(bat, "summary")$protocol$name, "batch_correction_scib")
})

test_that("EvaluateSAVE says which inputs a task needs", {
  real <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  expect_error(EvaluateSAVE(real, real), "needs groups")
  expect_error(EvaluateSAVE(real, task = "perturbation"), "needs generated")
  expect_error(EvaluateSAVE(real, task = "batch", batch_key = "batch"), "the batch task needs label_key and reductions or layers")
  expect_error(EvaluateSAVE("no/such/file.h5ad", real, groups = "cell_type"), "path of an existing .h5ad")
  expect_error(EvaluateSAVE(real, real, task = "perturbation", condition_key = "nope"), "'nope' is not a column")
})

test_that("EvaluateSAVE reads Seurat objects: the counts of real cells, the data slot of generated ones", {
  pbmc <- run_tiny(pbmc_small_seurat(), conditions = "groups")
  gen <- GenerateCells(pbmc, n = 30, conditions = data.frame(groups = c("g1", "g2")), seed = 1)
  scores <- EvaluateSAVE(pbmc, gen, groups = "groups", n_hvg = 100L)
  expect_setequal(rownames(scores), c("g1", "g2"))
  expect_true(all(is.finite(scores$MMD)))
  expect_identical(attr(scores, "summary")$scored_output, "sample")
})

test_that("EvaluateSAVE scores expression beside the main assay (SCE altExp, Seurat assay) like an assay", {
  pbmc <- bundled_pbmc()
  counts <- SummarizedExperiment::assay(pbmc, "counts")
  logs <- as.matrix(log1p(t(t(as.matrix(counts)) / Matrix::colSums(counts) * 1e4)))
  SummarizedExperiment::assay(pbmc, "lognorm") <- logs                                 # a layer, scored by pysave
  SingleCellExperiment::altExp(pbmc, "SAVE") <- SingleCellExperiment::SingleCellExperiment(list(logcounts = logs))
  a <- EvaluateSAVE(pbmc, task = "batch", batch_key = "batch", label_key = "cell_type", layers = c("lognorm", "SAVE"),
                    umap = FALSE)
  expect_setequal(rownames(a), c("pca_lognorm", "pca_SAVE"))
  expect_equal(a["pca_SAVE", "Total"], a["pca_lognorm", "Total"], tolerance = 1e-4)
  s <- suppressWarnings({  # Seurat renames genes with underscores; the PCA does not look at names
    s <- SeuratObject::CreateSeuratObject(counts = counts, meta.data = as.data.frame(SummarizedExperiment::colData(pbmc)))
    s[["SAVE"]] <- SeuratObject::CreateAssayObject(data = logs)
    s
  })
  b <- EvaluateSAVE(s, task = "batch", batch_key = "batch", label_key = "cell_type", layers = "SAVE", umap = FALSE)
  expect_equal(b["pca_SAVE", "Total"], a["pca_SAVE", "Total"], tolerance = 1e-4)
})
