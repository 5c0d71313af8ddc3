# The plain-Rscript acceptance run from issue 5, with default engine settings, timed per step:
#   Rscript r-package/tools/acceptance.R      (from the repository root, after R CMD INSTALL r-package)
step <- function(label, expr) {
  t0 <- proc.time()[["elapsed"]]
  value <- force(expr)
  cat(sprintf("[time] %-40s %7.1f s\n", label, proc.time()[["elapsed"]] - t0))
  value
}
# SAVER_ACCEPT_QUICK=1: the same steps with a small network and short training (for loaded machines).
quick <- nzchar(Sys.getenv("SAVER_ACCEPT_QUICK"))
invisible(step("library(saveR) + SeuratObject", { library(saveR); library(SeuratObject) }))
data("pbmc_small", package = "SeuratObject")
invisible(step("start Python (SAVEConfig(start = TRUE))", SAVEConfig(start = TRUE)))
pbmc <- if (!quick) {
  step("RunSAVE(pbmc_small, conditions = \"groups\")", RunSAVE(pbmc_small, conditions = "groups"))
} else {
  step("RunSAVE(pbmc_small, \"groups\", small network)",
       RunSAVE(pbmc_small, conditions = "groups", hidden_size = 32, condition_dim = 32, latent_dim = 16,
               n_encoder_layers = 1, n_decoder_layers = 1, n_heads = 2, flow_hidden_size = 32, flow_layers = 1,
               flow_token_size = 8, flow_heads = 2, n_blocks = 8, max_epochs = 50, flow_epochs = 200))
}
emb <- Embeddings(pbmc, "save")
stopifnot("save" %in% Reductions(pbmc), nrow(emb) == ncol(pbmc_small), identical(rownames(emb), colnames(pbmc_small)))
cat("reduction 'save':", nrow(emb), "cells x", ncol(emb), "dimensions; model in", Tool(pbmc, "RunSAVE")$model_dir, "\n")
gen <- step("GenerateCells(pbmc, n = 500, groups = g1)", GenerateCells(pbmc, n = 500, conditions = list(groups = "g1")))
stopifnot(inherits(gen, "Seurat"), ncol(gen) == 500, all(gen$groups == "g1"))
gen2 <- step("GenerateCells(data.frame of 2 rows, n = 250)", GenerateCells(pbmc, n = 250, conditions = data.frame(groups = c("g1", "g2"))))
stopifnot(ncol(gen2) == 500)
cat("acceptance: OK\n")
