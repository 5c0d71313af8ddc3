test_that("Python candidates come in the documented order", {
  old <- options(saveR.python = "/opt/explicit/python")
  on.exit(options(old), add = TRUE)
  old_env <- Sys.getenv("RETICULATE_PYTHON", unset = NA)
  Sys.setenv(RETICULATE_PYTHON = "/opt/env/python")
  on.exit(if (is.na(old_env)) Sys.unsetenv("RETICULATE_PYTHON") else Sys.setenv(RETICULATE_PYTHON = old_env), add = TRUE)
  venv <- file.path(tempfile("proj"), "sub")
  dir.create(file.path(dirname(venv), ".venv", "bin"), recursive = TRUE)
  dir.create(venv)
  file.create(file.path(dirname(venv), ".venv", "bin", "python"))
  owd <- setwd(venv)
  on.exit(setwd(owd), add = TRUE)
  cands <- saveR:::.python_candidates("/opt/arg/python")
  expect_identical(cands$source[1:4], c("argument 'python'", "option saveR.python", "RETICULATE_PYTHON",
                                        "project .venv (working directory)"))
  expect_identical(cands$python[1:3], c("/opt/arg/python", "/opt/explicit/python", "/opt/env/python"))
  expect_identical(normalizePath(cands$python[4]), normalizePath(file.path(dirname(venv), ".venv", "bin", "python")))
  expect_identical(cands$source[nrow(cands)], "reticulate default (python3 on the PATH)")
  # an explicit interpreter that does not exist is one clear error naming it and the install command
  expect_error(saveR:::.find_python("/opt/arg/python"), "argument 'python'.*does not exist.*scripts/setup.sh")
})

test_that("SAVEConfig reports the Python in use and SAVEAvailable is TRUE", {
  expect_true(SAVEAvailable())
  out <- capture.output(info <- SAVEConfig(start = TRUE))
  expect_true(any(grepl("pysave: ", out)))
  expect_true(file.exists(info$python))
  expect_identical(info$versions$pysave, "0.1.0")
  expect_match(info$versions$numpy, "^1\\.")
})

test_that("exported functions have no argument that is a prefix of another (R partial matching)", {
  funs <- list(RunSAVE.Seurat = saveR:::RunSAVE.Seurat, RunSAVE.SingleCellExperiment = saveR:::RunSAVE.SingleCellExperiment,
               GenerateCells = GenerateCells, TransferCells = TransferCells, LoadSAVE = LoadSAVE,
               WriteH5AD = WriteH5AD, ReadH5AD = ReadH5AD, SAVEConfig = SAVEConfig)
  for (nm in names(funs)) {
    args <- c(setdiff(names(formals(funs[[nm]])), "..."),
              if (startsWith(nm, "RunSAVE")) c(names(saveR:::.MODEL_ARGS), names(saveR:::.TRAIN_ARGS)))
    for (a in args) {
      clash <- setdiff(args[startsWith(args, a)], a)
      expect_identical(clash, character(0), label = paste(nm, a))
    }
  }
})

test_that("RunSAVE's engine arguments are exactly pysave's", {
  py_defaults <- reticulate::py_to_r(reticulate::import("pysave.model", convert = FALSE)$DEFAULTS)
  expect_setequal(c(unname(saveR:::.MODEL_ARGS), "seed"), names(py_defaults))
  train_formals <- reticulate::py_eval("list(__import__('inspect').signature(__import__('pysave').SAVE.train).parameters)")
  # chunk_size only applies to backed (on-disk) AnnData, which an R object never is.
  expect_setequal(c(unname(saveR:::.TRAIN_ARGS), "seed", "device", "progress", "chunk_size", "self"), unlist(train_formals))
})

test_that("GenerateCells' and TransferCells' defaults are pysave's (generate_like / transfer)", {
  saveR:::.py()
  py_defaults <- function(method) reticulate::py_eval(sprintf(paste0(
    "{k: p.default for k, p in __import__('inspect').signature(__import__('pysave').SAVE.%s).parameters.items() ",
    "if p.default is not __import__('inspect').Parameter.empty}"), method))
  pymodel <- reticulate::import("pysave.model")
  r_default <- function(fun, arg) {
    value <- eval(formals(fun)[[arg]])
    if (is.character(value)) value[1] else value  # match.arg: the first choice
  }
  # R argument = pysave argument
  gen <- py_defaults("generate_like")
  map <- c(guidance = "guidance", steps = "n_steps", solver = "solver", seed = "seed", precision = "precision",
           calibrate = "calibrate", torch_compile = "torch_compile")
  for (a in names(map)) {
    expect_identical(r_default(GenerateCells, a), gen[[map[[a]]]], label = paste("GenerateCells", a))
  }
  precisions <- c(unlist(reticulate::import("pysave.train")$PRECISIONS), "auto")
  expect_setequal(eval(formals(GenerateCells)$precision), precisions)
  expect_setequal(eval(formals(TransferCells)$precision), precisions)
  # generate_like's output default is None: "sample" (DEFAULT_OUTPUT) where the model can sample
  expect_true("output" %in% names(gen) && is.null(gen[["output"]]))
  expect_identical(r_default(GenerateCells, "expression"), pymodel$DEFAULT_OUTPUT)
  expect_setequal(eval(formals(GenerateCells)$expression), unlist(pymodel$OUTPUT_KINDS))
  tr <- py_defaults("transfer")
  map <- c(expression = "output", via = "via", guidance = "guidance", steps = "n_steps", seed = "seed", precision = "precision")
  for (a in names(map)) {
    expect_identical(r_default(TransferCells, a), tr[[map[[a]]]], label = paste("TransferCells", a))
  }
  expect_setequal(eval(formals(TransferCells)$expression), unlist(pymodel$TRANSFER_OUTPUTS))
  expect_setequal(eval(formals(TransferCells)$via), unlist(pymodel$TRANSFER_VIAS))
})

test_that("R numbers for integer engine arguments reach pysave as Python ints", {
  mods <- saveR:::.py()
  out <- mods$bridge$to_python_values(list(decoder_head_size = 0, n_blocks = 4, block_size = 50, hidden_size = 64,
                                            kl_weight = 0.2))
  type_of <- function(key) reticulate::py_to_r(mods$builtins$type(out$get(key))$`__name__`)
  # the bridge takes them from pysave.model.INTEGER_PARAMS; a float width breaks nn.Linear
  for (key in c("decoder_head_size", "n_blocks", "block_size", "hidden_size")) expect_identical(type_of(key), "int", label = key)
  expect_identical(type_of("kl_weight"), "float")
})
