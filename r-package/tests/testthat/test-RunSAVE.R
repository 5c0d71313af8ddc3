test_that("RunSAVE on pbmc_small (Seurat) adds a 'save' reduction and keeps the model", {
  s <- pbmc_small_seurat()
  dir <- tempfile("model_")
  out <- run_tiny(s, conditions = "groups", out_dir = dir, corrected = TRUE, batch_key = "groups", seed = 3)
  expect_s4_class(out, "Seurat")
  expect_true("save" %in% SeuratObject::Reductions(out))
  emb <- SeuratObject::Embeddings(out, "save")
  expect_identical(rownames(emb), colnames(s))
  expect_identical(dim(emb), c(ncol(s), 16L))
  expect_identical(SeuratObject::Key(out[["save"]]), "SAVE_")
  expect_true(all(is.finite(emb)))
  info <- out@tools$RunSAVE
  expect_identical(info$model_dir, normalizePath(dir))
  expect_true(file.exists(file.path(dir, "weights.safetensors")))
  expect_identical(info$conditions, "groups")
  expect_true(info$trained_here)
  expect_identical(info$params$hidden_size, 32L)
  expect_true(length(info$training) > 0)
  expect_true("SAVE" %in% SeuratObject::Assays(out))
  expect_identical(dim(SeuratObject::GetAssayData(out, assay = "SAVE", slot = "data")), dim(SeuratObject::GetAssayData(s)))
  # the object is otherwise unchanged
  expect_identical(out@meta.data, s@meta.data)
  expect_identical(SeuratObject::GetAssayData(out, slot = "counts"), SeuratObject::GetAssayData(s, slot = "counts"))
  # the stored model is reused: same latent without training, and GenerateCells finds it
  again <- RunSAVE(s, model = dir, reduction_name = "save2", verbose = FALSE)
  expect_equal(SeuratObject::Embeddings(again, "save2"), emb, tolerance = 1e-6, ignore_attr = TRUE)
  expect_false(again@tools$RunSAVE$trained_here)
})

test_that("RunSAVE on a SingleCellExperiment adds reducedDim 'SAVE' and metadata", {
  sce <- pbmc_small_sce()
  out <- run_tiny(sce, conditions = c("groups", "letter.idents"), batch_key = "groups", corrected = TRUE)
  expect_s4_class(out, "SingleCellExperiment")
  emb <- SingleCellExperiment::reducedDim(out, "SAVE")
  expect_identical(dim(emb), c(ncol(sce), 16L))
  expect_identical(rownames(emb), colnames(sce))
  expect_true(dir.exists(S4Vectors::metadata(out)$SAVE$model_dir))
  expect_identical(S4Vectors::metadata(out)$SAVE$conditions, c("groups", "letter.idents"))
  expect_true("save_corrected" %in% SummarizedExperiment::assayNames(out))
})

test_that("RunSAVE corrects with a model whose VAE never masked the batch: the mean over batches", {
  sce <- pbmc_small_sce()
  out <- expect_no_warning(run_tiny(sce, conditions = "groups", batch_key = "groups", corrected = TRUE, vae_mask_prob = 0))
  dir <- S4Vectors::metadata(out)$SAVE$model_dir
  everywhere <- RunSAVE(sce, model = dir, corrected = TRUE, reference = "all", verbose = FALSE)
  expect_equal(SummarizedExperiment::assay(out, "save_corrected"), SummarizedExperiment::assay(everywhere, "save_corrected"))
  # the mask asked for by name still decodes with the untrained [MASK] row, and says so
  expect_warning(RunSAVE(sce, model = dir, corrected = TRUE, reference = "[MASK]", verbose = FALSE), "vae_mask_prob=0")
})

test_that("RunSAVE with an existing model works on the shared fixture", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  out <- RunSAVE(sce, model = LoadSAVE(tiny_model_dir()), verbose = FALSE)
  expect_identical(dim(SingleCellExperiment::reducedDim(out, "SAVE")), c(60L, 16L))
  expect_error(RunSAVE(sce, model = tiny_model_dir(), max_epochs = 2, verbose = FALSE), "cannot be used with an existing model")
  expect_error(RunSAVE(sce, model = tiny_model_dir(), conditions = "n_counts", verbose = FALSE), "model's conditions are batch, cell_type")
  odd <- sce
  odd$batch <- factor(ifelse(seq_len(ncol(odd)) == 1, "10x_v9", as.character(odd$batch)))
  expect_error(RunSAVE(odd, model = tiny_model_dir(), verbose = FALSE), "unknown value.*10x_v9.*for condition 'batch'")
})

test_that("RunSAVE(corrected = \"flow\") adds the corrected expression and the moved latent as a reduction", {
  sce <- ReadH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"))
  dec <- RunSAVE(sce, model = LoadSAVE(tiny_model_dir()), corrected = "decoder", verbose = FALSE)
  flow <- RunSAVE(sce, model = LoadSAVE(tiny_model_dir()), corrected = "flow", verbose = FALSE)
  expect_false("SAVE_corrected" %in% SingleCellExperiment::reducedDimNames(dec))
  moved <- SingleCellExperiment::reducedDim(flow, "SAVE_corrected")
  expect_identical(dim(moved), c(60L, 16L))
  expect_identical(rownames(moved), colnames(sce))
  expect_false(isTRUE(all.equal(unname(moved), unname(SingleCellExperiment::reducedDim(flow, "SAVE")))))
  xd <- as.matrix(SummarizedExperiment::assay(dec, "save_corrected"))
  xf <- as.matrix(SummarizedExperiment::assay(flow, "save_corrected"))
  expect_identical(dim(xf), dim(xd))
  expect_gt(max(abs(xf - xd)), 1e-3)
  # TRUE is pysave's default path
  def <- RunSAVE(sce, model = LoadSAVE(tiny_model_dir()), corrected = TRUE, verbose = FALSE)
  expect_equal(as.matrix(SummarizedExperiment::assay(def, "save_corrected")), xd)
  # by default each corrected cell is a log1p(CP10k) profile, as the input was normalized
  expect_equal(unname(colSums(expm1(xd))), rep(1e4, ncol(xd)), tolerance = 1e-4)
  raw <- RunSAVE(sce, model = LoadSAVE(tiny_model_dir()), corrected = TRUE, normalize_total = FALSE, verbose = FALSE)
  xr <- as.matrix(SummarizedExperiment::assay(raw, "save_corrected"))
  expect_gt(sd(colSums(expm1(xr))), 10)
  expect_equal(unname(log1p(t(t(expm1(xr)) / colSums(expm1(xr))) * 1e4)), unname(xd), tolerance = 1e-5)
  expect_error(RunSAVE(sce, model = tiny_model_dir(), corrected = TRUE, normalize_total = NA, verbose = FALSE),
               "RunSAVE: normalize_total must be TRUE", fixed = TRUE)
  expect_error(RunSAVE(sce, model = tiny_model_dir(), corrected = "harmony", verbose = FALSE),
               "RunSAVE: corrected must be FALSE, TRUE, \"decoder\" or \"flow\"", fixed = TRUE)
  # the strings RunSAVE accepts are exactly pysave's correction paths
  expect_setequal(unlist(reticulate::import("pysave.model")$CORRECT_VIAS), c("decoder", "flow"))
  s <- run_tiny(pbmc_small_seurat(), conditions = "groups", batch_key = "groups", corrected = "flow")
  expect_true(all(c("save", "save_corrected") %in% SeuratObject::Reductions(s)))
  expect_identical(SeuratObject::Key(s[["save_corrected"]]), "SAVEC_")
  expect_identical(dim(SeuratObject::Embeddings(s, "save_corrected")), c(80L, 16L))
})

test_that("RunSAVE refuses bad input with messages that say the fix", {
  s <- pbmc_small_seurat()
  expect_error(run_tiny(s, conditions = c("groups", "celltype")), "'celltype' not found in the cell metadata; available columns: orig.ident")
  expect_error(RunSAVE(data.frame(a = 1:3), conditions = "a"), "needs a Seurat \\(v4\\) or SingleCellExperiment object, got an object of class 'data.frame'")
  expect_error(RunSAVE(matrix(1:4, 2), conditions = "a"), "class 'matrix/array'")
  # no counts: a Seurat object made from normalized data only, and an SCE without a counts assay
  data_only <- suppressWarnings(SeuratObject::CreateSeuratObject(SeuratObject::CreateAssayObject(data = SeuratObject::GetAssayData(s, slot = "data"))))
  data_only$groups <- s$groups
  expect_error(run_tiny(data_only, conditions = "groups"), "has no 'counts' in assay 'RNA'; SAVE needs raw counts")
  sce <- pbmc_small_sce()
  SummarizedExperiment::assay(sce, "counts") <- NULL
  expect_error(run_tiny(sce, conditions = "groups"), "has no 'counts' assay \\(its assays: logcounts\\)")
  # normalized values passed as counts are refused by the engine, with its message
  expect_error(run_tiny(s, conditions = "groups", slot = "data"), "integer")
  expect_error(run_tiny(s, conditions = "groups", epochs = 3), "unknown argument\\(s\\) 'epochs'.*did you mean")
  expect_error(run_tiny(s, conditions = "groups", batch_key = "letter.idents"), "batch_key must be one of the conditions")
  expect_error(run_tiny(s, conditions = "groups", assay = "ADT"), "assay 'ADT' is not in the Seurat object")
  expect_error(run_tiny(s, conditions = "groups", out_dir = tempdir()), "already exists")
})

test_that("RunSAVE passes torch_compile to training and records it", {
  sce <- pbmc_small_sce()
  out <- run_tiny(sce, conditions = "groups", torch_compile = TRUE)
  expect_true(isTRUE(S4Vectors::metadata(out)$SAVE$training$torch_compile))
  expect_identical(dim(SingleCellExperiment::reducedDim(out, "SAVE")), c(ncol(sce), 16L))
})
