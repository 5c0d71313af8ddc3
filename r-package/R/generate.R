# Generation and transfer: new objects of generated / predicted cells.

.output_class <- function(object, output) {
  if (!is.null(output)) {
    output <- match.arg(output, c("Seurat", "SingleCellExperiment"))
    return(output)
  }
  if (.is_sce(object)) return("SingleCellExperiment")
  if (.is_seurat(object)) return("Seurat")
  if (requireNamespace("SeuratObject", quietly = TRUE)) "Seurat" else "SingleCellExperiment"
}

# An AnnData result of pysave (generate / transfer) -> Seurat or SCE with a SAVE reduction.
.result_object <- function(adata, output) {
  obj <- .parts_to_object(.anndata_parts(adata), output, reduction_keys = list(save = "SAVE_"))
  if (output == "SingleCellExperiment" && "save" %in% SingleCellExperiment::reducedDimNames(obj)) {
    SingleCellExperiment::reducedDimNames(obj)[SingleCellExperiment::reducedDimNames(obj) == "save"] <- "SAVE"
  }
  obj
}

.model_of_object <- function(object, model, device, fun) {
  if (.is_seurat(object) || .is_sce(object)) return(.resolve_model(model, object, device, fun))
  if (!is.null(model)) {
    stop(sprintf("%s: give the model once, as the first argument or as model =.", fun), call. = FALSE)
  }
  if (inherits(object, "SAVEModel") || (is.character(object) && length(object) == 1)) {
    return(.resolve_model(object, NULL, device, fun))
  }
  stop(sprintf("%s: the first argument must be a Seurat or SingleCellExperiment object that RunSAVE() was run on, a model directory or a LoadSAVE() result; got class '%s'.",
               fun, paste(class(object), collapse = "/")), call. = FALSE)
}

.check_condition_names <- function(keys, model, fun, what = "conditions") {
  bad <- setdiff(keys, model$conditions)
  if (length(bad)) {
    stop(sprintf("%s: %s is not a condition of this model; its conditions are: %s.", fun,
                 paste0("'", bad, "'", collapse = ", "), paste(model$conditions, collapse = ", ")), call. = FALSE)
  }
}

# One of `choices` (match.arg rules: the default vector gives the first, unique prefixes match),
# or an error naming the function, the argument and the allowed values.
.choice <- function(value, choices, fun, name) {
  tryCatch(match.arg(value, choices), error = function(e) {
    got <- if (is.character(value) && length(value) == 1) sprintf("\"%s\"", value)
           else sprintf("a %s of length %d", class(value)[1], length(value))
    stop(sprintf("%s: %s must be one of %s; got %s.", fun, name, paste0("\"", choices, "\"", collapse = " or "), got),
         call. = FALSE)
  })
}

# Inf is allowed (equal weights), so not .check_number(); pysave says the same for <= 0 and NaN.
.check_shift_bandwidth <- function(value, fun) {
  if (!is.numeric(value) || length(value) != 1 || is.na(value) || value <= 0) {
    stop(fun, ": shift_bandwidth must be a positive number (default 0.5; Inf weighs the strata equally); got ",
         if (is.atomic(value) && length(value) == 1) format(value) else sprintf("a %s of length %d", class(value)[1], length(value)),
         ".", call. = FALSE)
  }
  as.numeric(value)
}

# One finite number; `whole`: a whole number in [lower, .Machine$integer.max].
.check_number <- function(value, fun, name, whole = FALSE, lower = -Inf, hint = NULL) {
  ok <- is.numeric(value) && length(value) == 1 && !is.na(value) && is.finite(value) && value >= lower &&
    (!whole || (value == round(value) && value <= .Machine$integer.max))
  if (!ok) {
    what <- if (whole) sprintf("a whole number >= %s", format(lower)) else "one finite number"
    stop(sprintf("%s: %s must be %s; got %s.%s", fun, name, what,
                 if (is.atomic(value) && length(value) == 1) format(value) else sprintf("a %s of length %d", class(value)[1], length(value)),
                 if (is.null(hint)) "" else paste0(" ", hint)),
         call. = FALSE)
  }
  if (whole) as.integer(value) else as.numeric(value)
}

# expression = "sample" needs the training cells' library sizes, which model directories saved by
# an older pysave lack: say so in R's terms (pysave's own message names its `output` argument).
.check_can_sample <- function(pymodel, fun) {
  if (!reticulate::py_has_attr(pymodel, "library_stats")) return(invisible(NULL))
  if (!isTRUE(.r(.py()$builtins$bool(pymodel$library_stats)))) {
    stop(sprintf(paste0("%s: this model directory has no library-size statistics (it was saved by an older pysave), ",
                        "so it cannot sample counts; use expression = \"mean\" or retrain the model."), fun), call. = FALSE)
  }
  invisible(NULL)
}

.as_condition_values <- function(x) {
  v <- as.character(x)
  v[is.na(v)] <- "[MASK]"
  v
}

#' Generate cells for any combination of conditions
#'
#' Samples latents with the flow for the given conditions and decodes them. Conditions that
#' are not named are masked (left to the model), so any subset can be given, including
#' combinations never seen in training. Returns a **new** Seurat or SingleCellExperiment object
#' of generated cells: log-normalized expression (log1p of counts per 10,000; Seurat "data"
#' slot, SCE "logcounts"), the conditions in the cell metadata (factors with the model's
#' categories; masked = `NA`), the sampled latent as reduction "save" (SCE: "SAVE"), and the
#' provenance in `object@misc$pysave` / `metadata(sce)$pysave`.
#'
#' @param object A model: a Seurat or SingleCellExperiment object that [RunSAVE()] was run on,
#'   a model directory, or a [LoadSAVE()] result.
#' @param n Cells per combination.
#' @param conditions A named list (one combination, e.g. `list(celltype = "B")`; `NA` masks a
#'   condition), or a data.frame with one row per combination (condition columns, and
#'   optionally an `n_cells` column that overrides `n` per row).
#' @param output "Seurat" or "SingleCellExperiment" (default: the class of `object`; Seurat
#'   for a model).
#' @param guidance Classifier-free guidance weight for every cell (1 = the plain conditional
#'   model; larger pushes cells towards their conditions). The default, `NULL`, weighs each cell
#'   by its combination: 1.5 for combinations seen in training (and cells with an `NA`
#'   condition), closer to real cells than 1 or 2 in pysave's benchmarks, and 1 for
#'   combinations no training cell had, which scored better there than 1.5 (see `shift_from`).
#'   Recorded in the provenance (`guidance`: the number, or "auto" with `guidance_seen`,
#'   `guidance_never_seen` and `guidance_never_seen_cells`). CLI `--guidance`.
#' @param steps ODE steps of a fixed-grid solver (network passes per step: 1 euler, 2 midpoint,
#'   4 rk4). The default, 10 midpoint steps, scored like 50 Euler steps in pysave's benchmarks at
#'   2.5x less compute.
#' @param solver "euler", "midpoint", "rk4" (fixed steps) or "dopri5" (adaptive, ignores `steps`).
#' @param seed Random seed (same seed, same cells).
#' @param device "auto", "cpu", "cuda", "cuda:N" or "mps".
#' @param precision Precision of the flow and the decoder: "auto" (full precision on every device,
#'   so that the cells do not depend on the batch size; RunSAVE's "auto" trains in bf16 on CUDA),
#'   "32" or "bf16" (1.3-1.6x faster on CPUs with native bf16, such as AVX512-bf16 or AMX, with
#'   the same scores in pysave's benchmarks). Recorded in the provenance.
#' @param expression The values to return (pysave's `output`, CLI `--output-kind`): "sample"
#'   (the default: counts sampled around the decoder mean with a library size drawn from the
#'   training cells of the same conditions, then log1p of counts per 10,000, so cells have
#'   zeros and count noise like real ones) or "mean" (the decoder mean itself: smooth, no
#'   zeros). Left at its default, a model directory saved by an older pysave without
#'   library-size statistics gives "mean" (as pysave does; asking for "sample" from such a model
#'   is an error). The kind used is recorded in the provenance (`$output`).
#' @param shift_from A named list, e.g. `list(stim = "CTRL")`: generate by way of these values.
#'   The flow samples latents with them in place of `conditions`' values, each latent takes the
#'   training cells' latent shift to `conditions`' values (as `TransferCells(via = "shift")`),
#'   and is decoded under `conditions`. For a combination never seen in training (stimulated x
#'   a cell type seen only as control) it was closer to the real cells than sampling the
#'   combination directly (pysave's benchmarks: Kang, 7 held-out types x 2 seeds, per-gene-mean
#'   r2 0.836 against 0.691 at guidance 1, the default's weight for never-seen combinations; at
#'   1.5 both routes score lower, 0.823 against 0.672). Recorded in the provenance
#'   (`shift_from`, `shift_strata`). CLI `--shift-from`.
#'   Without it, asking for a combination no training cell had warns and names a `shift_from`
#'   that reaches it (the one-condition change whose shift is learned from the most strata); the
#'   provenance lists such combinations (`never_seen_combinations`).
#' @param shift_neighbours `shift_from`'s local shifts: each latent takes the mean transport
#'   displacement of its N nearest training cells (as in [TransferCells()]; default 30; 0 weighs
#'   the strata's mean shifts with `shift_bandwidth` instead). CLI `--shift-neighbours`.
#' @param shift_bandwidth Width of `shift_from`'s weighting over the strata with
#'   `shift_neighbours = 0` (as in [TransferCells()]; default 0.5, `Inf` weighs them equally).
#' @param calibrate `TRUE` (the default) moves the decoder mean of each combination seen in
#'   training (with at least 3 training cells) onto its training cells' mean expression, by an
#'   offset the model keeps from training; combinations never seen, or with a condition left
#'   `NA`, are generated as decoded. In pysave's benchmarks (pbmc_3tech, 4 seeds) it brought the
#'   generated cells from 1.07x to 1.03x the noise floor's W1. `FALSE` gives the decoder's own
#'   output. Models saved by an older pysave have no offsets and generate uncalibrated (the
#'   provenance says so: `calibrated`, `calibrated_cells`). Calibration also widens each such
#'   combination with at least 10 kept training cells towards its training cells' spread, by
#'   per-PC factors from one pilot draw of 256 cells per combination (fixed seed, the call's
#'   sampler settings; those of the default settings are drawn by training and kept in the model
#'   directory, others once per session): the decoder alone gives about
#'   two-thirds of the real spread (`spread_calibrated_cells`, or `spread_skipped`, why not; not
#'   with `shift_from`). CLI `--no-calibrate`.
#' @param torch_compile `TRUE` compiles the flow's Transformer with `torch.compile` for this call:
#'   it sampled 1.3x as fast on a 2-core CPU in pysave's benchmarks, after a compilation of about
#'   20 s, so it pays from tens of thousands of cells. The cells differ from the uncompiled ones
#'   by rounding only. Needs a C++ compiler on the CPU. Recorded in the provenance
#'   (`torch_compile`). CLI `--torch-compile`.
#' @return A Seurat or SingleCellExperiment object of generated cells.
#' @examples
#' if (SAVEAvailable()) {
#'   model <- system.file("extdata", "tiny_model", package = "saveR")
#'   gen <- GenerateCells(model, n = 5, conditions = list(cell_type = "B"),
#'                        output = "SingleCellExperiment")
#'   table(gen$cell_type)
#'   plan <- data.frame(cell_type = c("B", "NK"), batch = c("10x_5prime", NA))
#'   gen2 <- GenerateCells(model, n = 3, conditions = plan, output = "SingleCellExperiment")
#'   smooth <- GenerateCells(model, n = 5, conditions = list(cell_type = "B"), expression = "mean")
#' }
#' @export
GenerateCells <- function(object, n = 500, conditions = list(celltype = "B"), output = NULL, guidance = NULL,
                          steps = 10L, solver = "midpoint", seed = 0L, device = "auto",
                          expression = c("sample", "mean"), precision = c("auto", "32", "bf16"), shift_from = NULL,
                          shift_bandwidth = 0.5, shift_neighbours = 30L, calibrate = TRUE, torch_compile = FALSE) {
  # Left at its default (or NULL), pysave chooses: "sample", or "mean" for a model that cannot sample.
  kind <- if (missing(expression) || is.null(expression)) NULL
          else .choice(expression, c("sample", "mean"), "GenerateCells", "expression")
  # NULL: pysave's per-cell default (1.5 for seen combinations, 1 for never-seen ones)
  if (!is.null(guidance)) {
    guidance <- .check_number(guidance, "GenerateCells", "guidance",
                              hint = "Or leave it NULL (the default): 1.5 for combinations seen in training, 1 for never-seen ones.")
  }
  steps <- .check_number(steps, "GenerateCells", "steps", whole = TRUE, lower = 1)
  solver <- .choice(solver, c("euler", "midpoint", "rk4", "dopri5"), "GenerateCells", "solver")  # = pysave.flow.SOLVERS (tested)
  seed <- .check_number(seed, "GenerateCells", "seed", whole = TRUE, lower = 0)
  precision <- .choice(as.character(precision), c("auto", "32", "bf16"), "GenerateCells", "precision")  # = pysave.train.PRECISIONS + auto (tested)
  shift_bandwidth <- .check_shift_bandwidth(shift_bandwidth, "GenerateCells")
  shift_neighbours <- .check_number(shift_neighbours, "GenerateCells", "shift_neighbours", whole = TRUE, lower = 0)
  if (!is.logical(calibrate) || length(calibrate) != 1 || is.na(calibrate)) {
    stop("GenerateCells: calibrate must be TRUE or FALSE.", call. = FALSE)
  }
  if (!is.logical(torch_compile) || length(torch_compile) != 1 || is.na(torch_compile)) {
    stop("GenerateCells: torch_compile must be TRUE or FALSE.", call. = FALSE)
  }
  if (!is.null(shift_from)) {
    ok <- is.list(shift_from) && length(shift_from) && !is.null(names(shift_from)) && all(nzchar(names(shift_from))) &&
      all(vapply(shift_from, function(v) length(v) == 1 && !is.na(v), logical(1)))
    if (!ok) stop("GenerateCells: shift_from must be a named list of one value per condition, e.g. list(stim = \"CTRL\").",
                  call. = FALSE)
    shift_from <- lapply(shift_from, as.character)
  }
  model <- .model_of_object(object, NULL, device, "GenerateCells")
  output <- .output_class(object, output)
  if (!is.numeric(n) || length(n) != 1 || is.na(n) || n < 1 || n != round(n)) {
    stop("GenerateCells: n must be one positive whole number of cells per combination.", call. = FALSE)
  }
  if (is.data.frame(conditions)) {
    table <- conditions
    counts <- if ("n_cells" %in% names(table)) table$n_cells else rep(n, nrow(table))
    table$n_cells <- NULL
    if (!nrow(table)) stop("GenerateCells: the conditions data.frame has no rows.", call. = FALSE)
  } else if (is.list(conditions) || is.null(conditions)) {
    conditions <- as.list(conditions)
    if (length(conditions) && (is.null(names(conditions)) || any(!nzchar(names(conditions))))) {
      stop("GenerateCells: conditions must be a named list, e.g. list(celltype = \"B\").", call. = FALSE)
    }
    long <- vapply(conditions, function(v) length(v) > 1, logical(1))
    if (any(long)) {
      stop("GenerateCells: a list gives one value per condition; for several combinations pass a data.frame (one row each).", call. = FALSE)
    }
    conditions <- lapply(conditions, function(v) if (is.null(v) || length(v) == 0) NA_character_ else v)
    table <- as.data.frame(conditions, stringsAsFactors = FALSE, optional = TRUE)
    if (!ncol(table)) table <- data.frame(row.names = 1)
    counts <- n
  } else {
    stop("GenerateCells: conditions must be a named list or a data.frame.", call. = FALSE)
  }
  .check_condition_names(names(table), model, "GenerateCells")
  if (any(is.na(counts)) || any(counts < 0) || any(counts != round(counts))) {
    stop("GenerateCells: n_cells must hold non-negative whole numbers.", call. = FALSE)
  }
  columns <- lapply(table, .as_condition_values)
  names(columns) <- names(table)
  py <- .py()
  pymodel <- .py_model(model$path, device)
  if (identical(kind, "sample")) .check_can_sample(pymodel, "GenerateCells")
  tab <- .pycall(py$bridge$conditions_table(columns, as.integer(rep_len(counts, max(1, nrow(table))))), "GenerateCells")
  if (!is.null(shift_from)) .check_condition_names(names(shift_from), model, "GenerateCells", "shift_from")
  adata <- .pycall(pymodel$generate_like(tab, guidance = guidance, n_steps = steps, solver = solver, seed = seed,
                                         output = kind, precision = precision,
                                         shift_from = if (is.null(shift_from)) NULL else reticulate::r_to_py(shift_from),
                                         shift_bandwidth = shift_bandwidth, shift_neighbours = shift_neighbours,
                                         calibrate = calibrate, torch_compile = torch_compile),
                 "GenerateCells")
  .result_object(adata, output)
}

#' Predict cells under other conditions (perturbation or batch transfer)
#'
#' Encodes each cell under its own conditions, moves its latent to the `target` conditions
#' (by default, `via = "auto"`, by the training cells' latent shift where it can be used, else
#' through the flow) and decodes it under `target`: e.g. `list(stim = "STIM")` predicts
#' stimulated cells from controls, `list(batch = "b1")` moves cells to another batch,
#' `list(batch = NA)` removes the batch. Returns a **new** object (the class of `object`, or
#' `output`) with log-normalized expression (Seurat "data" slot, SCE "logcounts"), the input's
#' metadata with the changed conditions (the original values in `<condition>_source`), the
#' latent that was decoded as reduction "save" (SCE: "SAVE": the encoder means, moved by the
#' shift or the flow unless `via = "decoder"`), and the provenance (target, `output`, `via`: the
#' path taken, and with "auto" `via_reason`) in `object@misc$pysave` / `metadata(sce)$pysave`.
#'
#' @param object A Seurat or SingleCellExperiment object with raw counts and the model's
#'   condition columns (a missing column is masked).
#' @param model A model directory or [LoadSAVE()] result (default: the one [RunSAVE()] stored
#'   in `object`).
#' @param target A named list of condition = new value (`NA` masks it).
#' @param output "Seurat" or "SingleCellExperiment" (default: the class of `object`).
#' @param assay,slot Where the raw counts are (as in [RunSAVE()]).
#' @param device "auto", "cpu", "cuda", "cuda:N" or "mps".
#' @param expression The values to return (pysave's `output`, CLI `--output-kind`): "mean" (the
#'   default: the decoder mean, the best estimate of each cell's expression under the target),
#'   "sample" (counts sampled around it with a library size drawn for the target conditions,
#'   then log1p of counts per 10,000; needs a model saved with library-size statistics), or
#'   "input_plus_change" (each cell's own log1p of counts per 10,000 plus the change the model
#'   predicts for it: decoded under the target minus decoded under its own conditions, clipped
#'   at 0; the model's reconstruction error cancels and each cell keeps its measured noise).
#' @param via "auto" (the default: "shift" where it can be used, else "flow": for a
#'   masked target (`NA`), without training cells of both values under the same other
#'   conditions, or with a model saved without per-condition latent means; the path taken and
#'   why are in the provenance, `via` and `via_reason`. In pysave's benchmarks the shift was
#'   ahead of the flow for perturbation of held-out cell types (Kang IFN-beta, R^2 on the
#'   top-100 DEGs 0.872 against 0.836) and for moving cells to another batch), "shift" (scGen's
#'   latent arithmetic: add the training cells' latent shift between the source and target
#'   values, taken per value of the other conditions that has both, from the training cells
#'   whose expression lies closest to the cell moved (in 30 principal components of the training
#'   cells' log-normalized expression; see `shift_neighbours`), then decode under the target;
#'   needs a target value, not `NA`, and a model saved with per-condition latent means (retrain
#'   older ones); the strata used are in the provenance), "flow" (move the latent back through
#'   the flow to noise under the cell's conditions, forward under the target ones, then decode)
#'   or "decoder" (decode the encoder mean under the target conditions; the latent stays; much
#'   faster; R^2 on the top-100 DEGs about 0.64 on Kang). CLI `--via`. Through the flow, target
#'   combinations no training cell had give a warning and are listed in the provenance
#'   (`never_seen_combinations`): the flow composed them worse than the shift (Kang, held-out
#'   types, per-gene-mean r2 0.75 against 0.87).
#' @param shift_neighbours `via = "shift"`: each cell takes the mean displacement of its N
#'   nearest training cells (default 30), each matched to the target's cells of its stratum by
#'   optimal transport in the latent (pysave's benchmarks: Kang, R^2 top-100 DEGs / all genes
#'   0.906 / 0.906 against 0.900 / 0.903 for stratum means). 0 weighs the strata's mean shifts
#'   with `shift_bandwidth` instead, as models saved before 2026-12-01 do. Recorded in the
#'   provenance (`shift_neighbours`). CLI `--shift-neighbours`.
#' @param shift_bandwidth With `shift_neighbours = 0`: width of the weighting over the strata, in
#'   units of the median squared distance between their source means (default 0.5): smaller takes
#'   each cell's shift from the strata nearest it, `Inf` weighs them equally (scGen's mean). CLI
#'   `--shift-bandwidth`.
#' @param guidance Classifier-free guidance weight of the flow (`via = "flow"`, or "auto" when
#'   it takes the flow).
#' @param steps Euler steps each way through the flow (`via = "flow"`, or "auto" when it takes
#'   the flow).
#' @param seed Random seed of the sampled counts (`expression = "sample"` only).
#' @param precision Precision of the flow and the decoder: "auto", "32" or "bf16" (as in
#'   [GenerateCells()]).
#' @return A Seurat or SingleCellExperiment object of predicted cells.
#' @examples
#' if (SAVEAvailable()) {
#'   model <- system.file("extdata", "tiny_model", package = "saveR")
#'   cells <- ReadH5AD(system.file("extdata", "pbmc_tiny.h5ad", package = "saveR"))
#'   moved <- TransferCells(cells, model, target = list(batch = "10x_5prime"))
#'   table(moved$batch_source, moved$batch)
#'   fast <- TransferCells(cells, model, target = list(batch = "10x_5prime"), via = "decoder")
#' }
#' @export
TransferCells <- function(object, model = NULL, target = list(stim = "STIM"), output = NULL, assay = NULL,
                          slot = "counts", device = "auto", expression = c("mean", "sample", "input_plus_change"),
                          via = c("auto", "shift", "flow", "decoder"), guidance = 2, steps = 50L, seed = 0L,
                          precision = c("auto", "32", "bf16"), shift_bandwidth = 0.5, shift_neighbours = 30L) {
  expression <- .choice(expression, c("mean", "sample", "input_plus_change"), "TransferCells", "expression")
  shift_bandwidth <- .check_shift_bandwidth(shift_bandwidth, "TransferCells")
  shift_neighbours <- .check_number(shift_neighbours, "TransferCells", "shift_neighbours", whole = TRUE, lower = 0)
  via <- .choice(via, c("auto", "shift", "flow", "decoder"), "TransferCells", "via")
  guidance <- .check_number(guidance, "TransferCells", "guidance")
  steps <- .check_number(steps, "TransferCells", "steps", whole = TRUE, lower = 1)
  seed <- .check_number(seed, "TransferCells", "seed", whole = TRUE, lower = 0)
  precision <- .choice(as.character(precision), c("auto", "32", "bf16"), "TransferCells", "precision")
  .check_object(object, "TransferCells")
  model <- .resolve_model(model, object, device, "TransferCells")
  output <- .output_class(object, output)
  if (!is.list(target) || !length(target) || is.null(names(target)) || any(!nzchar(names(target)))) {
    stop("TransferCells: target must be a named list, e.g. target = list(stim = \"STIM\").", call. = FALSE)
  }
  .check_condition_names(names(target), model, "TransferCells", "target")
  target <- lapply(target, function(v) {
    if (is.null(v) || length(v) == 0 || is.na(v[1])) return("[MASK]")
    if (length(v) > 1) stop("TransferCells: give one target value per condition.", call. = FALSE)
    as.character(v)
  })
  if (.is_seurat(object)) assay <- .seurat_assay(object, assay)
  adata <- .object_to_anndata(object, assay = assay, slot = slot, fun = "TransferCells")
  pymodel <- .py_model(model$path, device)
  if (expression == "sample") .check_can_sample(pymodel, "TransferCells")
  out <- .pycall(pymodel$transfer(adata, reticulate::r_to_py(target), output = expression, seed = seed, via = via,
                                  guidance = guidance, n_steps = steps, precision = precision,
                                  shift_bandwidth = shift_bandwidth, shift_neighbours = shift_neighbours), "TransferCells")
  .result_object(out, output)
}
