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
