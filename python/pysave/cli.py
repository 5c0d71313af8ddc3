"""The ``pysave`` command line. Every command calls the same model methods as Python and R.

User errors print one line (``Error: ...``) and exit with status 1, without a traceback.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections import Counter

import click

from .errors import PySaveError


def _friendly(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PySaveError as err:
            raise click.ClickException(str(err)) from None
        except MemoryError:
            raise click.ClickException("out of memory; use a smaller --batch-size or fewer cells.") from None
    return wrapper


def _parse_sets(values: tuple[str, ...], option: str = "--set") -> dict:
    out = {}
    for item in values:
        if "=" not in item:
            raise PySaveError(f"{option} needs KEY=VALUE, got {item!r} (e.g. {option} cell_type=B).")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in out:
            raise PySaveError(f"{option} names {key!r} twice; give each condition once.")
        out[key] = value.strip()
    return out


def _load_model(model_dir: str, device: str, quiet: bool = False):
    from .model import SAVE

    return SAVE.load(model_dir, device=device, verbose=not quiet)


def _read_data(path: str):
    """An input dataset: .h5ad, or .rds holding a SingleCellExperiment or Seurat v4 object."""
    from .io import read_anndata

    return read_anndata(path)


def _read_table(path: str):
    import pandas as pd

    if not os.path.exists(path):
        raise PySaveError(f"table {path!r} does not exist.")
    if path.endswith((".h5ad", ".rds")):
        return _read_data(path).obs.copy()
    sep = "\t" if path.endswith((".tsv", ".txt", ".tsv.gz")) else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str)
    except Exception as err:  # noqa: BLE001 - any parser failure is a bad table for the user
        raise PySaveError(f"could not read table {path!r}: {err}") from err
    if "n_cells" in table.columns:
        table["n_cells"] = pd.to_numeric(table["n_cells"], errors="coerce")
    return table


def _log(message: str) -> None:
    click.echo(message, err=True)


common_device = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
common_overwrite = click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
common_quiet = click.option("--quiet", is_flag=True, help="Print only errors.")
# train.PRECISIONS + auto, written out (--help must not import torch; a test keeps them equal).
sampling_precision = click.option(
    "--precision", type=click.Choice(["auto", "32", "bf16"]), default="auto", show_default=True,
    help="Precision of the flow and the decoder: auto = 32 on every device, so that cells do not depend on the batch "
         "size (in bf16 on a GPU the decoder rounds by batch size). On CPUs with native bf16 "
         "(AVX512-bf16/AMX) bf16 sampled 1.3-1.6x faster with the same scores (benchmarks/README.md).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pysave")
def main():
    """pysave: SAVE, multi-condition single-cell generation (gene-block attention VAE + latent flow matching)."""
    # A warning on the command line reads as one line of text, not as Python source and a line
    # number; put back when the command ends (the CLI may be invoked from Python, e.g. in tests).
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    click.get_current_context().call_on_close(lambda: setattr(warnings, "formatwarning", previous))


@main.command()
@click.argument("data", type=click.Path())
@click.option("--condition", "conditions", multiple=True, required=True, help="obs column to condition on (repeat for several).")
@click.option("--batch-key", default=None, help="Condition that is the batch (max-abs scalers per batch).")
@click.option("--layer", default=None, help="Layer holding raw counts (default: X).")
@click.option("--out", "out", required=True, type=click.Path(), help="Model directory to write.")
@click.option("--epochs", "max_epochs", type=int, default=None, help="VAE epochs (default: scvi-tools heuristic, at most 400).")
@click.option("--flow-epochs", type=int, default=None, help="Flow epochs (default: 2 x VAE epochs, at least 8,000 steps).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="VAE learning rate (AdamW; the paper's 1e-4 trained worse here, see the README).")
@click.option("--flow-lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=2.5e-5, show_default=True)
@click.option("--warmup-epochs", type=int, default=None, help="Linear lr warm-up in epochs (default: 2 for the VAE, a quarter of the epochs for the flow; a value given applies to both).")
@click.option("--validation-fraction", type=float, default=0.1, show_default=True)
@click.option("--patience", type=int, default=20, show_default=True, help="Early-stopping patience of the VAE in epochs (the flow runs all its epochs and keeps the last).")
@click.option("--no-early-stopping", is_flag=True)
@click.option("--gene-embeddings", default="data", show_default=True, help="'data', 'builtin' (shipped gene-knowledge table; 'builtin:human', 'builtin:mouse'), 'random' or a CSV/TSV/NPZ/parquet file.")
@click.option("--block-size", type=int, default=None, help="Genes per block K.")
@click.option("--n-blocks", type=int, default=None, help="Number of blocks L (default 32).")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian", "nb"]), default="bernoulli", show_default=True)
@click.option("--hidden-size", type=int, default=256, show_default=True)
@click.option("--condition-dim", type=int, default=512, show_default=True)
@click.option("--latent-dim", type=int, default=128, show_default=True)
@click.option("--latent-token-size", type=int, default=8, show_default=True)
@click.option("--encoder-layers", "n_encoder_layers", type=int, default=3, show_default=True)
@click.option("--decoder-layers", "n_decoder_layers", type=int, default=3, show_default=True)
@click.option("--decoder-head-size", type=int, default=None,
              help="Width of the decoder's last hidden layer before the genes (default: --hidden-size; 0: the paper's direct linear map).")
@click.option("--feed-forward-size", type=int, default=None,
              help="Width of the feed-forward layer in each VAE Transformer block (default: 4 x --hidden-size).")
@click.option("--heads", "n_heads", type=int, default=4, show_default=True)
@click.option("--dropout", type=float, default=0.0, show_default=True)
@click.option("--gelu-approximate", type=click.Choice(["none", "tanh"]), default="none", show_default=True,
              help="Feed-forward activation: exact GELU ('none') or its tanh approximation (models saved before 2026-12-05; slower on CPUs).")
@click.option("--flow-hidden-size", type=int, default=128, show_default=True)
@click.option("--flow-layers", type=int, default=2, show_default=True)
@click.option("--flow-token-size", type=int, default=32, show_default=True)
@click.option("--flow-heads", type=int, default=4, show_default=True)
@click.option("--flow-condition-dim", type=int, default=256, show_default=True, help="Size of the flow's time + condition embedding.")
@click.option("--mask-prob", type=float, default=0.15, show_default=True, help="Masking of each condition while training the flow (the paper: 0.6).")
@click.option("--mask-all-prob", type=float, default=0.1, show_default=True,
              help="Probability of masking all of a cell's conditions at once while training the flow (trains guidance's unconditional velocity whatever the number of conditions).")
@click.option("--vae-mask-prob", type=float, default=0.2, show_default=True)
@click.option("--kl-weight", type=float, default=0.05, show_default=True,
              help="Weight of the KL term; 0.5 for a model meant for batch correction / integration (better scIB scores; worse generation and transfer).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint-every", type=int, default=10, show_default=True,
              help="Write the training state to OUT.checkpoint every N epochs (0: never).")
@click.option("--resume", is_flag=True, help="Continue from OUT.checkpoint (same command otherwise).")
@click.option("--backed", is_flag=True,
              help="Stream cells from the .h5ad on disk (CSR counts in X) instead of loading it: memory stays flat in the number of cells.")
@click.option("--chunk-size", type=int, default=None,
              help="With --backed: rows per sequential read; 8 chunks are shuffled together (default 4096).")
@click.option("--precision", type=click.Choice(["auto", "32", "bf16"]), default="auto", show_default=True,
              help="bf16 autocast or full precision; auto = bf16 on CUDA GPUs, 32 on CPU. On CPUs with native bf16 (AVX512-bf16/AMX) bf16 trained the paper-size network 1.46x faster (benchmarks/README.md).")
@click.option("--torch-compile", is_flag=True,
              help="Compile the VAE with torch.compile for training: 1.34x faster in bf16 on a 2-core CPU (~1.1x in fp32), after a one-off compilation of 1.5-2 min (seconds once cached); pays on long runs over many cells. Needs a C++ compiler on the CPU.")
@common_device
@common_overwrite
@common_quiet
@_friendly
def train(data, conditions, batch_key, layer, out, max_epochs, flow_epochs, batch_size, lr, flow_lr, weight_decay,
          warmup_epochs, validation_fraction, patience, no_early_stopping, checkpoint_every, resume, backed, chunk_size,
          precision, torch_compile, device, overwrite, quiet, **params):
    """Train a SAVE model on DATA (.h5ad with raw counts) and write it to --out.

    The training state is checkpointed beside the output (OUT.checkpoint); after an interruption
    the same command with --resume continues and gives the same model as an uninterrupted run.

    Started by torchrun (torchrun --nproc_per_node=N -m pysave train ...), the cells are shared
    out over the N processes with DistributedDataParallel; only rank 0 logs and writes.
    """
    import shutil

    from . import distributed as dist_utils
    from .io import check_output_path, read_h5ad
    from .model import SAVE, resolve_device

    check_output_path(out, overwrite, inputs=(data,))
    if backed and str(data).lower().endswith(".rds"):
        raise PySaveError("--backed streams an .h5ad file; convert the .rds first (saveR::WriteH5AD) or drop --backed.")
    if chunk_size is not None and chunk_size < 1:
        raise PySaveError(f"--chunk-size must be a positive integer, got {chunk_size}.")
    dist_utils.init_from_env(resolve_device(device))
    is_main = dist_utils.is_main_process()
    quiet = quiet or not is_main
    adata = read_h5ad(data, backed=True) if backed else _read_data(data)
    SAVE.setup_anndata(adata, condition_keys=list(conditions), layer=layer, batch_key=batch_key)
    model = SAVE(adata, verbose=not quiet, **params)
    checkpoint_dir = out.rstrip("/") + ".checkpoint"
    if not resume and os.path.exists(checkpoint_dir) and not quiet:
        _log(f"starting fresh; {checkpoint_dir} will be replaced (pass --resume to continue from it)")
    model.train(max_epochs=max_epochs, flow_epochs=flow_epochs, batch_size=batch_size, lr=lr, flow_lr=flow_lr,
                weight_decay=weight_decay, warmup_epochs=warmup_epochs, validation_fraction=validation_fraction,
                early_stopping=not no_early_stopping, early_stopping_patience=patience, seed=params["seed"],
                device=device, progress=not quiet, checkpoint_dir=checkpoint_dir if checkpoint_every else None,
                checkpoint_every=checkpoint_every, resume=resume, precision=precision, chunk_size=chunk_size,
                torch_compile=torch_compile)
    if is_main:  # the other ranks hold the same weights; rank 0 alone writes
        model.save(out, overwrite=overwrite)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    dist_utils.shutdown()
    if not quiet:
        _log(f"wrote model to {out}")


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option("--n", "n_cells", type=int, default=None, help="Number of cells (with --set).")
@click.option("--set", "sets", multiple=True, help="Condition KEY=VALUE (repeat); conditions not set are masked.")
@click.option("--like", "like", type=click.Path(), default=None, help="CSV/TSV/h5ad table: one row per cell, or with an n_cells column.")
@click.option("--out", required=True, type=click.Path(), help="Output .h5ad.")
# The default is model.DEFAULT_GUIDANCE / NEVER_SEEN_GUIDANCE written out (a test keeps them equal).
@click.option("--guidance", type=float, default=None,
              show_default="1.5 for combinations seen in training, 1 for never-seen ones",
              help="Classifier-free guidance weight w for every cell (1 = the plain conditional model; larger pushes "
                   "cells towards their conditions). Left out, each cell gets its combination's weight.")
@click.option("--steps", "n_steps", type=int, default=10, show_default=True,
              help="ODE steps of a fixed-grid solver (network passes: x1 euler, x2 midpoint, x4 rk4).")
# The choices are flow.SOLVERS written out and the defaults model.DEFAULT_STEPS / DEFAULT_SOLVER
# (a test keeps them equal): --help must not import torch.
@click.option("--solver", type=click.Choice(["euler", "midpoint", "rk4", "dopri5"]), default="midpoint", show_default=True,
              help="euler, midpoint or rk4 take --steps fixed steps; dopri5 is adaptive and ignores --steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--chunk-size", type=int, default=4096, show_default=True,
              help="Cells generated and written at a time, at most (fewer above 4,096 genes: 2^24 values a chunk, to bound memory).")
@click.option("--output-kind", type=click.Choice(["sample", "mean"]), default=None,
              help="sample (default): counts drawn around the decoder mean (zeros and noise like real cells), as "
                   "log1p(CP10k); mean: the decoder mean itself. Models saved by older pysave versions can only give mean.")
@click.option("--shift-from", "shift_from", multiple=True,
              help="KEY=VALUE (repeat): sample the flow with these values instead, then add the training cells' latent "
                   "shift to the asked ones (e.g. --shift-from stim=control for a cell type never seen stimulated). "
                   "Without it, a combination never seen in training gets a warning that names one.")
@click.option("--shift-neighbours", type=int, default=30, show_default=True,
              help="--shift-from's local shifts: each cell takes the mean of its N nearest training cells' transport "
                   "displacements (as in transfer --shift-neighbours); 0 weighs the strata's mean shifts instead.")
@click.option("--shift-bandwidth", type=float, default=0.5, show_default=True,
              help="Width of --shift-from's weighting over the strata with --shift-neighbours 0 (as in transfer).")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Move the decoder mean of each combination seen in training onto its training cells' mean "
                   "(kept by train) and widen it towards their spread (a pilot draw of 256 cells per combination: "
                   "drawn by train for the default sampler settings and kept in the model directory, else once per "
                   "model and settings); "
                   "unseen or masked combinations are left as decoded.")
@sampling_precision
@click.option("--torch-compile", is_flag=True,
              help="Compile the flow's Transformer with torch.compile: sampled 1.3x as fast on a 2-core CPU, after a "
                   "compilation of ~20 s; pays from tens of thousands of cells. Needs a C++ compiler on the CPU.")
@common_device
@common_overwrite
@common_quiet
@_friendly
def generate(model_dir, n_cells, sets, like, out, guidance, n_steps, solver, seed, chunk_size, output_kind, shift_from,
             shift_neighbours, shift_bandwidth, calibrate, precision, torch_compile, device, overwrite, quiet):
    """Generate cells from MODEL_DIR for given conditions (any subset, unseen combinations too)."""
    from .io import check_output_path

    if (like is None) == (n_cells is None):
        raise PySaveError("give either --n N (with --set KEY=VALUE ...) or --like TABLE.")
    if like is not None and sets:
        raise PySaveError("--set cannot be combined with --like; put the conditions in the table.")
    check_output_path(out, overwrite, inputs=(like,) if like else ())
    model = _load_model(model_dir, device, quiet)
    table = _read_table(like) if like is not None else model.conditions_table(_parse_sets(sets), n_cells)
    # Streamed to disk chunk by chunk: memory stays flat for millions of cells.
    model.generate_to_h5ad(out, table, guidance=guidance, n_steps=n_steps, solver=solver, seed=seed,
                           batch_size=chunk_size, overwrite=overwrite, extra_uns={"model_dir": os.path.abspath(model_dir)},
                           output=output_kind, precision=precision,
                           shift_from=_parse_sets(shift_from, "--shift-from") or None, shift_bandwidth=shift_bandwidth,
                           shift_neighbours=shift_neighbours, calibrate=calibrate, torch_compile=torch_compile)
    if not quiet:
        _log(f"wrote generated cells to {out}")


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--set", "sets", multiple=True, required=True, help="Target condition KEY=VALUE (VALUE [MASK] removes it).")
@click.option("--out", required=True, type=click.Path())
@click.option("--output-kind", type=click.Choice(["mean", "sample", "input_plus_change"]), default="mean", show_default=True,
              help="mean: decoder mean of each cell's latent; sample: counts drawn around it, as log1p(CP10k); "
                   "input_plus_change: the cell's own log1p(CP10k) plus the predicted change (decoded under the target "
                   "minus decoded under its own conditions), clipped at 0.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampled output.")
@click.option("--via", type=click.Choice(["auto", "shift", "flow", "decoder"]), default="auto", show_default=True,
              help="auto: shift where it can be used, else flow (a [MASK] target, no training cells of both values "
                   "under the same other conditions); the path taken is in the output's uns['pysave']['via']. "
                   "shift: add the training cells' latent shift between the conditions (scGen's latent arithmetic, "
                   "per cell from the training cells it resembles), then decode under the target; flow: move the "
                   "cell's latent through the flow (back to noise under its conditions, forward under the target), "
                   "then decode (warns for target combinations no training cell had: the flow composes them worse than the "
                   "shift); decoder: decode the cell's latent under the target (fastest, least accurate for "
                   "perturbations).")
@click.option("--guidance", type=float, default=2.0, show_default=True, help="Guidance weight w of --via flow (or auto, when it takes the flow).")
@click.option("--steps", "n_steps", type=int, default=50, show_default=True, help="Euler steps each way of --via flow (or auto, when it takes the flow).")
# model.SHIFT_NEIGHBOURS and SHIFT_BANDWIDTH written out (a test keeps them equal): --help must not import torch.
@click.option("--shift-neighbours", type=int, default=30, show_default=True,
              help="--via shift: each cell takes the mean displacement of its N nearest training cells (in expression), "
                   "each matched to the target's cells of its stratum by optimal transport; 0 weighs the strata's "
                   "mean shifts with --shift-bandwidth instead (also what models saved before 2026-12-01 do).")
@click.option("--shift-bandwidth", type=float, default=0.5, show_default=True,
              help="With --shift-neighbours 0: width of the weighting over the strata, in units of the median squared "
                   "distance between their source means; smaller takes the shift from the nearest strata; inf weighs "
                   "them equally.")
@click.option("--backed", is_flag=True,
              help="Read DATA's cells from the .h5ad on disk chunk by chunk instead of loading it (CSR counts in X).")
@sampling_precision
@common_device
@common_overwrite
@common_quiet
@_friendly
def transfer(model_dir, data, sets, out, output_kind, seed, via, guidance, n_steps, shift_neighbours, shift_bandwidth,
             backed, precision, device, overwrite, quiet):
    """Encode the cells of DATA and decode them under other conditions (perturbation, batch)."""
    from .io import check_output_path, read_h5ad

    check_output_path(out, overwrite, inputs=(data,))
    if backed and str(data).lower().endswith(".rds"):
        raise PySaveError("--backed streams an .h5ad file; convert the .rds first (saveR::WriteH5AD) or drop --backed.")
    target = _parse_sets(sets)
    model = _load_model(model_dir, device, quiet)
    cells = read_h5ad(data, backed=True) if backed else _read_data(data)
    # Streamed to disk chunk by chunk: memory holds one chunk of the output, not cells x genes.
    model.transfer_to_h5ad(out, cells, target, overwrite=overwrite, inputs=(data,),
                           extra_uns={"model_dir": os.path.abspath(model_dir)}, output=output_kind, seed=seed, via=via,
                           guidance=guidance, n_steps=n_steps, precision=precision, shift_bandwidth=shift_bandwidth,
                           shift_neighbours=shift_neighbours)
    if not quiet:
        import anndata as ad

        written = ad.read_h5ad(out, backed="r")
        taken = dict(written.uns["pysave"])  # the path --via auto took, and why
        written.file.close()
        _log(f"wrote {cells.n_obs} transferred cells to {out} (via {taken['via']}"
             + (f": {taken['via_reason']})" if "via_reason" in taken else ")"))


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Copy of DATA with obsm['X_save'].")
@click.option("--key-added", default="X_save", show_default=True)
@common_device
@common_overwrite
@common_quiet
@_friendly
def embed(model_dir, data, out, key_added, device, overwrite, quiet):
    """Write the latent representation of DATA's cells to obsm (DATA itself is not changed)."""
    from .io import check_output_path, write_h5ad

    check_output_path(out, overwrite, inputs=(data,))
    model = _load_model(model_dir, device, quiet)
    adata = _read_data(data)
    model.get_latent_representation(adata, key_added=key_added)
    write_h5ad(adata, out, overwrite=overwrite, inputs=(data,))
    if not quiet:
        _log(f"wrote {adata.n_obs} cells with obsm[{key_added!r}] to {out}")


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Copy of DATA with the corrected layer and obsm['X_save'].")
@click.option("--batch-key", default=None, help="Condition to remove (default: the model's batch key).")
@click.option("--reference", multiple=True,
              help="Decode every cell as this batch (default: batch masked; 'all' for a model trained with "
                   "--vae-mask-prob 0, which never decoded a masked batch). Give it more than once, or 'all', to "
                   "average the decoded expression over those batches (or every batch of the model).")
@click.option("--layer-added", default="save_corrected", show_default=True)
# default = model.DEFAULT_CORRECT_VIA (a test keeps them equal)
@click.option("--via", type=click.Choice(["decoder", "flow"]), default="decoder", show_default=True,
              help="decoder: decode each cell's latent under the new batch; flow: first move the latent through the "
                   "flow with the batch masked (mixes batches better, but also cell types when batches differ in "
                   "composition and cell type is not a condition; writes the moved latent to obsm['X_save_corrected']).")
@click.option("--steps", "n_steps", type=int, default=50, show_default=True, help="Euler steps each way of --via flow.")
# default = model.DEFAULT_CORRECT_NORMALIZE_TOTAL (a test keeps them equal)
@click.option("--normalize-total/--no-normalize-total", default=True, show_default=True,
              help="Rescale each corrected cell to a log1p(CP10k) profile (its expm1 values summing to 1e4, as the "
                   "input was normalized); --no-normalize-total keeps the decoder's mean as it is.")
@common_device
@common_overwrite
@common_quiet
@_friendly
def correct(model_dir, data, out, batch_key, reference, layer_added, via, n_steps, normalize_total, device, overwrite, quiet):
    """Batch-corrected log-normalized expression of DATA, written to a layer."""
    from .io import check_output_path, write_h5ad

    check_output_path(out, overwrite, inputs=(data,))
    model = _load_model(model_dir, device, quiet)
    adata = _read_data(data)
    # one --reference: that batch; several: their mean (correct() takes a list); none: masked
    reference = None if not reference else reference[0] if len(reference) == 1 else list(reference)
    model.correct(adata, batch_key=batch_key, reference=reference, layer_added=layer_added, via=via, n_steps=n_steps,
                  normalize_total=normalize_total)
    model.get_latent_representation(adata)
    write_h5ad(adata, out, overwrite=overwrite, inputs=(data,))
    if not quiet:
        _log(f"wrote corrected expression to layer {layer_added!r} of {out}" +
             (" and the moved latent to obsm['X_save_corrected']" if via == "flow" else ""))


@main.command()
@click.argument("model_dir", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--by", "key", required=True, help="obs column to average attention by (e.g. cell_type).")
@click.option("--out", required=True, type=click.Path(), help="TSV table: categories x gene blocks.")
@click.option("--plot", type=click.Path(), default=None, help="Also draw a heatmap (PNG/PDF).")
@common_device
@common_overwrite
@common_quiet
@_friendly
def attention(model_dir, data, key, out, plot, device, overwrite, quiet):
    """Mean block attention per category of an obs column (paper appendix C)."""
    from .io import check_output_path, write_text_atomic
    from .plotting import attention_heatmap

    check_output_path(out, overwrite, inputs=(data,))
    if plot:
        check_output_path(plot, overwrite, inputs=(data,))
    model = _load_model(model_dir, device, quiet)
    table = model.attention_by(_read_data(data), key)
    write_text_atomic(out, table.to_csv(sep="\t"))
    if plot:
        attention_heatmap(table, plot)
    if not quiet:
        _log(f"wrote attention of {table.shape[1]} blocks for {table.shape[0]} categories to {out}")


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option("--blocks", "blocks_out", type=click.Path(), default=None, help="Write the gene-block table (TSV).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole config as JSON.")
@common_overwrite
@_friendly
def info(model_dir, blocks_out, as_json, overwrite):
    """Describe a model directory: genes, conditions, blocks, training."""
    from .io import check_output_path, load_model_dir, write_text_atomic
    from .model import MIN_ACTIVE_LATENT_DIMS, SAVE

    if as_json:
        config, _ = load_model_dir(model_dir)
        click.echo(json.dumps({k: v for k, v in config.items() if k not in ("genes", "history")}, indent=1))
        return
    model = SAVE.load(model_dir, device="cpu", verbose=False)
    click.echo(repr(model))
    for key, cats in model.registry["categories"].items():
        click.echo(f"  {key}: {', '.join(cats)}")
    summary = model.training_summary
    if summary:
        def stage(name):  # models saved before 2026-12-06 lack kept_epoch: they kept the best epoch
            s = summary[name]
            return (f"{s['epochs_run']} epochs, kept epoch {s.get('kept_epoch', s['best_epoch'])} "
                    f"(lowest loss {s['best_monitored_loss']:.4g} at epoch {s['best_epoch']})")

        click.echo(f"  trained on {summary['n_cells']} cells: VAE {stage('vae')}, flow {stage('flow')}, "
                   f"seed {summary['seed']}, device {summary['device']}")
        if "active_latent_dims" in summary:  # models saved before 2026-12-01 lack it
            click.echo(f"  latent dimensions in use: {summary['active_latent_dims']} of {model.params['latent_dim']}"
                       + (" (posterior collapse)" if summary["active_latent_dims"] < MIN_ACTIVE_LATENT_DIMS else ""))
    click.echo(f"  gene blocks: {model.blocks.method}")
    from .calibration import MIN_CALIBRATION_CELLS, SPREAD_MIN_CELLS, missing_reason, training_pc_variances

    stats = model.condition_latents or {}
    uncalibrated = missing_reason(stats, model.params["likelihood"])  # the reason generate() gives
    if uncalibrated:
        click.echo(f"  generation not calibrated: {uncalibrated}")
    else:
        click.echo(f"  generation calibrated for {int((stats['offset_cells'] >= MIN_CALIBRATION_CELLS).sum())} of "
                   f"{len(stats['offset_cells'])} combinations seen in training (those with >= {MIN_CALIBRATION_CELLS} cells)")
        if "cell_positions" in stats:
            widened = sum(1 for j in training_pc_variances(stats) if stats["offset_cells"][j] >= MIN_CALIBRATION_CELLS)
            click.echo(f"  spread calibrated for {widened} of them (those with >= {SPREAD_MIN_CELLS} kept training cells)")
        settings = Counter(key[1:] for key in model._spread_pilots)
        for (w, steps, solver, precision), n in sorted(settings.items()):
            click.echo(f"  spread pilots kept for {n} combination(s) at guidance {w:g}, {steps} {solver} steps, "
                       f"precision {precision} (generation at these settings draws none for them)")
    if blocks_out:
        check_output_path(blocks_out, overwrite)
        write_text_atomic(blocks_out, model.gene_blocks().to_csv(sep="\t", index=False))
        click.echo(f"  wrote the gene-block table to {blocks_out}")


@main.command()
@click.argument("model_dir", type=click.Path())
@click.option("--out", "out", type=click.Path(), default=None, help="Write the table (TSV) instead of printing it.")
@click.option("--species", type=click.Choice(["auto", "human", "mouse", "other"]), default="auto", show_default=True,
              help="How gene names map to the built-in GO table (auto: from the model's blocks or the names).")
@click.option("--top", type=int, default=5, show_default=True, help="GO terms listed per block.")
@common_overwrite
@_friendly
def blocks(model_dir, out, species, top, overwrite):
    """Gene blocks of a model: genes of each block and the GO terms most enriched among them."""
    from .gene_knowledge import describe_blocks
    from .io import check_output_path, write_text_atomic
    from .model import SAVE

    if top < 1:
        raise PySaveError(f"--top must be at least 1, got {top}.")
    if out:
        check_output_path(out, overwrite)
    model = SAVE.load(model_dir, device="cpu", verbose=False)
    table = describe_blocks(model.gene_blocks(), method=model.blocks.method,
                            species=None if species == "auto" else species, top=top)
    if out:
        write_text_atomic(out, table.to_csv(sep="\t", index=False))
        _log(f"wrote {len(table)} gene blocks with their top GO terms to {out}")
        return
    for row in table.itertuples(index=False):
        click.echo(f"block {row.block} ({row.n_genes} genes; placed by {row.placed_by}): {row.genes}")
        click.echo(f"  GO: {row.top_go_terms or '(no GO term on two or more genes)'}")


@main.command()
@click.option("--out", default="pysave_demo", show_default=True, type=click.Path(), help="Folder to write.")
@click.option("--epochs", type=int, default=100, show_default=True, help="VAE epochs.")
@click.option("--flow-epochs", type=int, default=None, help="Flow epochs (default: at least 8,000 steps).")
@click.option("--seed", type=int, default=0, show_default=True)
@common_device
@common_overwrite
@_friendly
def demo(out, epochs, flow_epochs, seed, device, overwrite):
    """Train on the bundled PBMC data (3 technologies x 9 cell types), generate every combination, plot."""
    from .demo import run_demo

    run_demo(out, epochs=epochs, flow_epochs=flow_epochs, seed=seed, device=device, overwrite=overwrite, log=_log)


# The columns `pysave evaluate` prints for generation (metrics.tsv and summary.json hold all of them).
GENERATION_SHOWN = ("n_real", "n_generated", "W1", "floor_W1", "floor_sized_W1", "gaussian_W1", "MMD", "floor_MMD",
                    "gaussian_MMD", "spread", "floor_spread", "mean_r2")


@main.command()
@click.argument("real", type=click.Path())
@click.argument("generated", type=click.Path(), required=False)
@click.option("--task", type=click.Choice(["generation", "batch", "perturbation"]), default="generation", show_default=True,
              help="generation: GENERATED vs REAL held-out cells per group; batch: scIB on the embeddings in REAL's obsm "
                   "(no GENERATED); perturbation: predicted stimulated cells (GENERATED) vs REAL, per cell type.")
@click.option("--out", required=True, type=click.Path(), help="Folder for metrics.tsv, summary.json and the plots.")
@click.option("--group", "groups", multiple=True, help="[generation] obs column(s) defining the groups (repeat for a combination).")
@click.option("--floor", "floor", type=click.Path(), default=None, help="[generation] Other real cells (e.g. the training cells) for the noise floor (floor_*), also drawn at each group's generated size (floor_sized_*), and for the per-group Gaussian baseline fitted to them (gaussian_*).")
@click.option("--counts-layer", default=None, help="[generation] Layer of REAL holding raw counts (default X).")
@click.option("--n-hvg", type=int, default=2000, show_default=True, help="[generation]")
@click.option("--n-pcs", type=int, default=30, show_default=True, help="[generation]")
@click.option("--batch-key", default=None, help="[batch] obs column of the batches.")
@click.option("--label-key", default=None, help="[batch] obs column of the cell labels.")
@click.option("--embedding", "embeddings", multiple=True, help="[batch] obsm key to score (repeat).")
@click.option("--layer-embedding", "layer_embeddings", multiple=True,
              help="[batch] Also score a 50-PC PCA of this layer (e.g. save_corrected from pysave correct; repeat).")
@click.option("--pre-integrated", default=None, help="[batch] obsm key of the unintegrated embedding (default: PCA of X).")
@click.option("--condition-key", default="condition", show_default=True, help="[perturbation]")
@click.option("--control", default="control", show_default=True, help="[perturbation] value of the control condition.")
@click.option("--stimulated", default="stimulated", show_default=True, help="[perturbation] value of the stimulated condition.")
@click.option("--cell-type-key", default="cell_type", show_default=True, help="[perturbation] scored per value of this column.")
@click.option("--n-degs", type=int, default=100, show_default=True, help="[perturbation] top DEGs (Wilcoxon).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-umap", is_flag=True, help="Skip the UMAP plot(s).")
@common_overwrite
@common_quiet
@_friendly
def evaluate(real, generated, task, out, groups, floor, counts_layer, n_hvg, n_pcs, batch_key, label_key, embeddings,
             layer_embeddings, pre_integrated, condition_key, control, stimulated, cell_type_key, n_degs, seed, no_umap,
             overwrite, quiet):
    """Score cells with the shipped protocols; writes metrics.tsv, summary.json and plots to --out.

    \b
    generation:    pysave evaluate REAL GENERATED --group cell_type [--floor TRAIN] --out DIR
    batch:         pysave evaluate DATA --task batch --batch-key batch --label-key cell_type --embedding X_save ... --out DIR
    perturbation:  pysave evaluate REAL PREDICTED --task perturbation --condition-key condition --out DIR
    """
    from .evaluation import check_request, evaluate as run_evaluation

    # evaluate()'s own checks, worded in flags and made before any file is read
    check_request(task, generated is not None, groups=groups, batch_key=batch_key, label_key=label_key,
                  n_embeddings=len(embeddings) + len(layer_embeddings), out=out, overwrite=overwrite, n_hvg=n_hvg,
                  n_pcs=n_pcs, n_degs=n_degs, surface="cli")
    real_a = _read_data(real)
    gen_a = _read_data(generated) if generated else None
    floor_a = _read_data(floor) if floor else None
    table, summary, files = run_evaluation(
        real_a, gen_a, task=task, out=out, groups=list(groups), floor=floor_a, counts_layer=counts_layer, n_hvg=n_hvg,
        n_pcs=n_pcs, batch_key=batch_key, label_key=label_key, embeddings=list(embeddings),
        layer_embeddings=list(layer_embeddings), pre_integrated=pre_integrated, condition_key=condition_key, control=control,
        stimulated=stimulated, cell_type_key=cell_type_key, n_degs=n_degs, seed=seed, umap=not no_umap, overwrite=overwrite,
        sources={"real": os.path.abspath(real), "generated": os.path.abspath(generated) if generated else None,
                 "floor": os.path.abspath(floor) if floor else None})
    if not quiet:
        # Generation's table has 20-odd columns, too wide for a terminal: the ones to read first
        # (each metric beside its floor and the Gaussian baseline); metrics.tsv holds every column.
        mean = summary.get("mean", {})
        if task == "generation":
            shown = [c for c in GENERATION_SHOWN if c in table.columns]
            keys = [k for k in shown if k in mean]
        else:  # every column, every mean (batch's are Total[embedding], no table column)
            shown, keys = list(table.columns), list(mean)
        click.echo(table[shown].round(4).to_string())
        click.echo("mean: " + ", ".join(f"{k}={mean[k]:.4g}" for k in keys))
        click.echo(f"wrote metrics.tsv (every column), summary.json, {', '.join(files)} to {out}")


if __name__ == "__main__":  # python -m pysave.cli
    sys.exit(main())
