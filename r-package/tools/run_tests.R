# Run saveR's testthat suite against the installed package and print one plain line
# "N passed, N failed" (CI cannot parse testthat's own summary). Exit status 1 on any failure.
#   Rscript r-package/tools/run_tests.R [tests-dir]
args <- commandArgs(trailingOnly = TRUE)
dir <- if (length(args)) args[1] else file.path("r-package", "tests", "testthat")
suppressPackageStartupMessages(library(testthat))
suppressPackageStartupMessages(library(saveR))
reporter <- ListReporter$new()
multi <- MultiReporter$new(list(SummaryReporter$new(show_praise = FALSE, max_reports = 100), reporter))
t0 <- proc.time()[["elapsed"]]
ok <- tryCatch({ test_dir(dir, reporter = multi, stop_on_failure = FALSE, load_package = "none"); TRUE },
               error = function(e) { message("test run aborted: ", conditionMessage(e)); FALSE })
res <- as.data.frame(reporter$get_results())
n_failed <- if (nrow(res)) sum(res$failed > 0 | res$error) else 0
n_passed <- if (nrow(res)) sum(res$failed == 0 & !res$error & !res$skipped) else 0
n_skipped <- if (nrow(res)) sum(res$skipped) else 0
bad <- if (nrow(res)) grepl("^bad input", res$test) else logical(0)
if (any(bad)) {
  cat(sprintf("\nbad_inputs (R): %d passed, %d failed\n", sum(bad & res$failed == 0 & !res$error & !res$skipped),
              sum(bad & (res$failed > 0 | res$error | res$skipped))))
}
cat(sprintf("\nsaveR tests (testthat blocks): %d passed, %d failed, %d skipped in %.0f s\n", n_passed, n_failed, n_skipped,
            proc.time()[["elapsed"]] - t0))
cat(sprintf("%d passed, %d failed\n", n_passed, n_failed + n_skipped))
quit(status = if (ok && n_failed == 0 && n_skipped == 0 && n_passed > 0) 0 else 1)
