# Finding the Python that has pysave, starting it once, and calling it with readable errors.

.saver <- new.env(parent = emptyenv())

INSTALL_HINT <- paste0(
  "Install pysave into a Python environment and tell saveR where it is:\n",
  "  git clone <pysave repository> && cd pysave && bash scripts/setup.sh   # creates .venv with pysave\n",
  "  (or: python3 -m pip install torch==2.13.0 && python3 -m pip install -c constraints.txt -e /path/to/pysave)\n",
  "then in R: options(saveR.python = \"/path/to/pysave/.venv/bin/python\")  (or set RETICULATE_PYTHON)\n",
  "and restart R if Python was already started. SAVEConfig() shows what saveR found.")

.venv_python <- function(dir) {
  if (.Platform$OS.type == "windows") file.path(dir, ".venv", "Scripts", "python.exe")
  else file.path(dir, ".venv", "bin", "python")
}

# .venv folders in `start` and each of its parents.
.venvs_above <- function(start) {
  out <- character(0)
  if (is.null(start) || !nzchar(start) || !dir.exists(start)) return(out)
  dir <- normalizePath(start, mustWork = FALSE)
  repeat {
    py <- .venv_python(dir)
    if (file.exists(py)) out <- c(out, py)
    parent <- dirname(dir)
    if (identical(parent, dir)) break
    dir <- parent
  }
  out
}

.package_dir <- function() {
  tryCatch(find.package("saveR", quiet = TRUE)[1], error = function(e) NA_character_)
}

#' Candidate Python interpreters, in the order saveR tries them
#'
#' 1. the `python` argument or `options(saveR.python = ...)`; 2. the `RETICULATE_PYTHON`
#' environment variable; 3. the project's virtual environment: a `.venv` in the working
#' directory or one of its parents, then beside the saveR package source or one of its
#' parents; 4. reticulate's own default (`python3` on the PATH).
#' @param python Explicit interpreter path (or `NULL`).
#' @return A data.frame with columns `source` and `python`.
#' @noRd
.python_candidates <- function(python = NULL) {
  rows <- list()
  add <- function(source, path) {
    if (length(path) && !is.na(path[1]) && nzchar(path[1])) rows[[length(rows) + 1]] <<- data.frame(source = source, python = path[1])
  }
  add("argument 'python'", python)
  add("option saveR.python", getOption("saveR.python"))
  add("RETICULATE_PYTHON", Sys.getenv("RETICULATE_PYTHON"))
  for (p in .venvs_above(getwd())) add("project .venv (working directory)", p)
  pkg <- .package_dir()
  if (!is.na(pkg)) for (p in .venvs_above(pkg)) add("project .venv (saveR package folder)", p)
  add("reticulate default (python3 on the PATH)", Sys.which("python3"))
  out <- if (length(rows)) do.call(rbind, rows) else data.frame(source = character(0), python = character(0))
  out[!duplicated(out$python), , drop = FALSE]
}

# Does `python` run and import pysave? Checked in a subprocess, so no Python is started here.
.has_pysave <- function(python) {
  if (!file.exists(python)) return(FALSE)
  status <- suppressWarnings(system2(python, c("-c", shQuote(
    "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('pysave') else 3)")),
    stdout = FALSE, stderr = FALSE))
  identical(as.integer(status), 0L)
}

# Pick the interpreter (first candidate with pysave); explicit choices must work.
.find_python <- function(python = NULL) {
  cands <- .python_candidates(python)
  cands$exists <- file.exists(cands$python)
  cands$has_pysave <- vapply(cands$python, .has_pysave, logical(1))
  explicit <- cands$source %in% c("argument 'python'", "option saveR.python")
  bad <- explicit & !cands$has_pysave
  if (any(bad)) {
    stop(sprintf("saveR: the Python named by %s (%s) %s.\n%s", cands$source[bad][1], cands$python[bad][1],
                 if (!cands$exists[bad][1]) "does not exist" else "cannot import pysave", INSTALL_HINT), call. = FALSE)
  }
  chosen <- which(cands$has_pysave)[1]
  cands$chosen <- seq_len(nrow(cands)) == chosen & !is.na(chosen)
  cands
}

.python_started <- function() reticulate::py_available(initialize = FALSE)

#' Start Python with pysave (once) and return the bridge modules (internal).
#' @noRd
.py <- function() {
  if (!is.null(.saver$modules)) return(.saver$modules)
  if (.python_started()) {
    if (!reticulate::py_module_available("pysave")) {
      cfg <- reticulate::py_config()
      stop(sprintf("saveR: Python was already started in this R session (%s) and cannot import pysave.\n%s",
                   cfg$python, INSTALL_HINT), call. = FALSE)
    }
  } else {
    cands <- .find_python()
    if (!any(cands$chosen)) {
      tried <- if (nrow(cands)) paste0("  ", cands$source, ": ", cands$python, collapse = "\n") else "  (none)"
      stop(sprintf("saveR: no Python with pysave was found. Tried, in order:\n%s\n%s", tried, INSTALL_HINT), call. = FALSE)
    }
    # RETICULATE_PYTHON comes first in reticulate's own search (before e.g. a pyproject.toml in
    # the working directory, which reticulate 1.28 would otherwise take for a Poetry project).
    Sys.setenv(RETICULATE_PYTHON = cands$python[cands$chosen])
    reticulate::use_python(cands$python[cands$chosen], required = TRUE)
  }
  bridge_dir <- system.file("python", package = "saveR")
  mods <- list(
    pysave = reticulate::import("pysave", convert = FALSE),
    bridge = reticulate::import_from_path("saver_bridge", path = bridge_dir, convert = FALSE),
    builtins = reticulate::import_builtins(convert = FALSE)
  )
  .saver$modules <- mods
  mods
}

# Run a Python call; turn a Python exception into one R error with the engine's message.
.pycall <- function(expr, what = NULL) {
  # pysave's warnings during the call become R warnings (reticulate would only print them).
  recording <- !is.null(.saver$modules)
  if (recording) .saver$modules$bridge$start_warnings()
  on.exit(if (recording) .reraise_python_warnings(what), add = TRUE)
  tryCatch(expr, error = function(e) {
    msg <- conditionMessage(e)
    last <- tryCatch(reticulate::py_last_error(), error = function(e2) NULL)
    if (!is.null(last) && !is.null(last$value) && nzchar(last$value) && grepl(last$value, msg, fixed = TRUE)) {
      msg <- if (identical(last$type, "PySaveError") || identical(last$type, "ModelDirectoryError")) last$value
             else paste0(last$type, ": ", last$value)
    }
    msg <- sub("^Error in py_call_impl\\(.*?\\) *: *", "", msg)
    stop(if (is.null(what)) msg else paste0(what, ": ", msg), call. = FALSE)
  })
}

.reraise_python_warnings <- function(what) {
  for (msg in .chr(.saver$modules$bridge$stop_warnings())) {
    warning(if (is.null(what)) msg else paste0(what, ": ", msg), call. = FALSE)
  }
  invisible()
}

# Explicit conversions (all Python objects are imported with convert = FALSE).
.r <- function(x) { force(x); reticulate::py_to_r(x) }  # force first: py_to_r would start a default Python
.chr <- function(x) { force(x); as.character(unlist(reticulate::py_to_r(x))) }

#' Is a Python with pysave available to saveR?
#'
#' `TRUE` when Python is already running with pysave, or when one of the interpreters saveR
#' looks for (see [SAVEConfig()]) can import pysave. Starts nothing. Useful in examples and
#' scripts that should skip the model when no Python is installed.
#' @return `TRUE` or `FALSE`.
#' @examples
#' SAVEAvailable()
#' @export
SAVEAvailable <- function() {
  if (!is.null(.saver$modules)) return(TRUE)
  if (.python_started()) return(reticulate::py_module_available("pysave"))
  cands <- tryCatch(.find_python(), error = function(e) NULL)
  !is.null(cands) && any(cands$chosen)
}

#' Show which Python saveR uses, and why
#'
#' Lists the interpreters saveR considers, in the order it tries them: the `python` argument
#' or `options(saveR.python = ...)`, the `RETICULATE_PYTHON` environment variable, the
#' project's virtual environment (a `.venv` in the working directory or a parent of it, or
#' beside the saveR package source), then `python3` on the PATH. The first that can import
#' pysave is used. With `start = TRUE`, Python is started and the versions of pysave, torch,
#' numpy and anndata are shown.
#'
#' @param python Optional path to a Python interpreter to try first; it is remembered in
#'   `options(saveR.python)` when it works.
#' @param start Start Python (if not yet started) and report package versions.
#' @return Invisibly, a list with `candidates` (a data.frame), `python` (the chosen
#'   interpreter or `NA`) and `versions` (when Python is running).
#' @examples
#' SAVEConfig()
#' @export
SAVEConfig <- function(python = NULL, start = FALSE) {
  started <- .python_started()
  if (started) {
    cands <- data.frame(source = "already running in this R session", python = reticulate::py_config()$python,
                        exists = TRUE, has_pysave = reticulate::py_module_available("pysave"), chosen = TRUE)
  } else {
    cands <- .find_python(python)
    if (!is.null(python) && any(cands$chosen)) options(saveR.python = python)
  }
  chosen <- if (any(cands$chosen)) cands$python[cands$chosen][1] else NA_character_
  cat("saveR: Python interpreters, in the order they are tried\n")
  for (i in seq_len(nrow(cands))) {
    cat(sprintf("  %s %-42s %s [%s]\n", if (cands$chosen[i]) "*" else " ", cands$source[i], cands$python[i],
                if (!cands$exists[i]) "missing" else if (cands$has_pysave[i]) "pysave found" else "no pysave"))
  }
  versions <- NULL
  if (is.na(chosen)) {
    cat("No Python with pysave was found.\n", INSTALL_HINT, "\n", sep = "")
  } else {
    cat("Using: ", chosen, if (started) " (Python already started)" else "", "\n", sep = "")
    if (start || started) {
      versions <- .r(.py()$bridge$versions())
      cat(paste0("  ", names(versions), ": ", unlist(versions), collapse = "\n"), "\n", sep = "")
    }
  }
  invisible(list(candidates = cands, python = chosen, versions = versions))
}
