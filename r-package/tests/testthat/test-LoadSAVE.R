test_that("LoadSAVE describes a model directory without leaking Python objects", {
  m <- LoadSAVE(tiny_model_dir())
  expect_s3_class(m, "SAVEModel")
  expect_identical(m$conditions, c("batch", "cell_type"))
  expect_identical(m$batch_key, "batch")
  expect_identical(m$categories$batch, c("10x_3prime_v1", "10x_3prime_v2", "10x_5prime"))
  expect_identical(length(m$genes), 40L)
  expect_true(m$is_trained)
  expect_false(any(vapply(unlist(m, recursive = TRUE), function(v) inherits(v, "python.builtin.object"), logical(1))))
  expect_output(print(m), "condition cell_type: 7 categories")
  expect_identical(LoadSAVE(m), m)
})

test_that("LoadSAVE errors say what is wrong", {
  expect_error(LoadSAVE(tempfile()), "does not exist; train one with RunSAVE")
  empty <- tempfile(); dir.create(empty)
  expect_error(LoadSAVE(empty), "incomplete: config.json is missing")
  expect_error(LoadSAVE(c("a", "b")), "one model directory")
})
