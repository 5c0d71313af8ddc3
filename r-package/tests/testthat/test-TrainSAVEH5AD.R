test_that("TrainSAVEH5AD trains from an .h5ad streamed from disk and the model works in R", {
  out <- tempfile("h5ad_model_")
  args <- c(list(shared_file("fixtures", "pbmc_tiny.h5ad"), conditions = c("batch", "cell_type"),
                 batch_key = "batch", out_dir = out, chunk_size = 16), TINY)
  model <- do.call(TrainSAVEH5AD, args)
  expect_s3_class(model, "SAVEModel")
  expect_true(isTRUE(model$training$backed))
  expect_identical(model$conditions, c("batch", "cell_type"))
  sce <- GenerateCells(model, n = 5, conditions = list(cell_type = model$categories$cell_type[[1]]))
  expect_equal(ncol(sce), 5)
  # The output folder is never replaced without overwrite = TRUE; bad paths say what to do.
  expect_error(do.call(TrainSAVEH5AD, args), "already exists")
  expect_error(TrainSAVEH5AD("no/such/file.h5ad", conditions = "batch", out_dir = tempfile()), "not an existing .h5ad")
  expect_error(TrainSAVEH5AD(shared_file("fixtures", "pbmc_tiny.h5ad"), conditions = "batch", out_dir = tempfile(),
                             hiden_size = 32), "did you mean hidden_size")
})
