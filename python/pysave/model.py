"""The user-facing model: ``SAVE`` over an AnnData, scvi-tools style.

    SAVE.setup_anndata(adata, condition_keys=["batch", "cell_type"], batch_key="batch")
    model = SAVE(adata)
    model.train()
    fake = model.generate({"cell_type": "B"}, n_cells=500)
    model.save("model_dir")

The networks (``vae``, ``flow``) know nothing of AnnData; this class owns the registry,
preprocessing, gene blocks and every task, and the CLI and R package call these methods.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from . import __version__
from . import data as D
from . import distributed as dist_utils
from . import io
from . import loader
from .blocks import GeneBlocks, build_gene_blocks, embedding_sample_rows
from .calibration import (MIN_CALIBRATION_CELLS, SPREAD_MAX_FACTOR, SPREAD_MIN_CELLS, SPREAD_PILOT_CELLS, SPREAD_PILOT_SEED,
                          SPREAD_TRAINED_PILOTS, Calibration, combination_offsets, missing_reason, spread_factors, training_pc_variances)
from .errors import ModelDirectoryError, PySaveError, warn_user
from .flow import SOLVERS, VelocityField, sample_latents, transport_latents
from .shift import (MIN_SHIFT_CELLS, SHIFT_BANDWIDTH, SHIFT_NEIGHBOURS, check_shift_bandwidth, check_shift_neighbours,
                    condition_latent_means, expression_pcs, expression_positions, kept_rows, kept_shift_cells, latent_shifts,
                    log_normalized_rows, never_seen, source_positions)
from .train import PRECISIONS, autocast, compiled, cpu_toolchain, fit, resolve_precision
from .vae import LIKELIHOODS, BlockAttentionVAE

# What the paper fixes, plus our documented choices for what it leaves open (README "Defaults").
DEFAULTS = dict(
    gene_embeddings="data",
    block_size=None,
    n_blocks=None,
    likelihood="bernoulli",
    hidden_size=256,
    condition_dim=512,
    latent_dim=128,
    latent_token_size=8,
    n_encoder_layers=3,
    n_decoder_layers=3,
    decoder_head_size=None,
    feed_forward_size=None,  # 4 x hidden_size
    n_heads=4,
    dropout=0.0,
    gelu_approximate="none",  # exact GELU: torch's CPU kernel for the tanh form is 2.8x slower
    flow_hidden_size=128,
    flow_layers=2,
    flow_token_size=32,
    flow_heads=4,
    flow_condition_dim=256,
    mask_prob=0.15,  # the paper's 0.6 generated worse here (README, Defaults)
    mask_all_prob=0.1,  # so that guidance's unconditional field trains whatever the number of conditions
    vae_mask_prob=0.2,
    kl_weight=0.05,
    seed=0,
)

# What model directories and training checkpoints saved before a parameter existed were trained
# with (their config.json or fingerprint lacks the key), where that differs from today's default
# or the parameter would otherwise enter the checkpoint's fingerprint (feed_forward_size: None is
# the 4 x width every run had).
PARAMS_BEFORE_THEY_EXISTED = dict(mask_all_prob=0.0, gelu_approximate="tanh", feed_forward_size=None)
GELU_FORMS = ("none", "tanh")


def fingerprint_params(params: dict) -> dict:
    """The parameters a training checkpoint is matched on: those at the value they had before
    they existed are left out, so that checkpoints written then still resume."""
    return {k: v for k, v in params.items() if k not in PARAMS_BEFORE_THEY_EXISTED or v != PARAMS_BEFORE_THEY_EXISTED[k]}


def fingerprint_differences(saved: dict, now: dict, prefix: str = "", saved_as: str = "checkpoint") -> list[str]:
    """What differs between a checkpoint's fingerprint (or another saved set of parameters) and
    this call's, as "key: checkpoint X, now Y"."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "absent"), now.get(key, "absent")
        if isinstance(a, dict) and isinstance(b, dict):
            out += fingerprint_differences(a, b, f"{prefix}{key}.", saved_as)
        elif a != b:
            out.append(f"{prefix}{key}: {saved_as} {a}, now {b}")
    return out


# Parameters that size networks or seed them, with their smallest valid value. Integral floats
# (128.0, as R and JSON hand them over) become ints; anything else is refused by name, instead of
# failing later inside torch. decoder_head_size 0 is the paper's direct linear map.
INTEGER_PARAMS = dict(
    block_size=1, n_blocks=1, hidden_size=1, condition_dim=1, latent_dim=1, latent_token_size=1,
    n_encoder_layers=1, n_decoder_layers=1, decoder_head_size=0, feed_forward_size=1, n_heads=1, flow_hidden_size=1,
    flow_layers=1, flow_token_size=1, flow_heads=1, flow_condition_dim=1, seed=0,
)


def _as_integer(key: str, value, minimum: int):
    if value is None and DEFAULTS[key] is None:  # None means "derived" for these (e.g. decoder_head_size)
        return None
    integral = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer())
    if isinstance(value, bool) or not integral or int(value) < minimum:
        hint = " (0 = the paper's direct linear map)" if key == "decoder_head_size" else ""
        raise PySaveError(f"{key} must be a whole number >= {minimum}{hint}, got {value!r}.")
    return int(value)


# What generate / transfer put in X (uns["pysave"]["output"]). "sample": counts drawn around the
# decoder mean with a library size from the training cells of the same conditions, then
# log1p(CP10k), like real cells; "mean": the decoder mean itself (smooth, no zeros or noise).
OUTPUT_KINDS = ("sample", "mean")
DEFAULT_OUTPUT = "sample"
# What precision="auto" means for generate / transfer / correct, on every device (_precision says why).
SAMPLING_AUTO_PRECISION = "32"
SAMPLE_RATES = "log_mean"  # D.sample_counts: Poisson rates whose expected log1p(CP10k) is the decoder mean
OUTPUT_DESCRIPTIONS = {
    "mean": "decoder mean (expected log1p(CP10k)), no count noise",
    "sample": "counts sampled around the decoder mean (Poisson with rates whose expected log1p(CP10k) is the decoder "
              "mean; negative binomial with the learned dispersion for likelihood='nb'), library size drawn from the "
              "training cells of the same conditions, then log1p(CP10k)",
    "input_plus_change": "the input cell's own log1p(CP10k) plus the change the model predicts for it (decoder mean "
                         "under the target minus the decoder mean of its encoder mean under its own conditions), "
                         "clipped at 0",
}
# transfer() only: the predicted change added to the measured cells, so the VAE's reconstruction
# error cancels and each cell keeps its own noise. Kang, 7 held-out types x 4 seeds, via="shift":
# R^2 top-100 DEGs 0.901 against 0.887 for the decoder mean, unseen-combination r2 0.864 against
# 0.848 (benchmarks/README.md; scGen-style arithmetic on scVI given the same output: 0.903).
INPUT_PLUS_CHANGE = "input_plus_change"
TRANSFER_OUTPUTS = (*OUTPUT_KINDS, INPUT_PLUS_CHANGE)

# Classifier-free guidance weight of generation for combinations seen in training (and rows with a
# masked condition); generate's default. w = 2 until 2026-12-06 (it beat w = 1 and 3 on the
# code of 2026-11-21). Swept again on today's model (calibrated, >= 8,000 flow steps; the same models
# sampled at each w, sampled counts, 80/20 splits), w = 1.5 against 2, mean MMD: pbmc_3tech 1.341
# against 1.348 and Baron 1.322 against 1.351 (4 seeds each), the 4-condition sets 1.341 / 1.328
# against 1.351 / 1.354, scVelo 0.201 against 0.204; pbmc4k the one loss, 0.446 against 0.440 (still
# under its Gaussian's); 1.25, 1.75 and 3 worse overall (benchmarks/README.md, "Guidance weight,
# swept again"). Guidance narrows each group, and calibration now places the centres it paid for.
# w != 1 costs a second pass per step.
DEFAULT_GUIDANCE = 1.5
# ...but not for combinations never seen in training: Kang's held-out ones, 7 types x 2 seeds, scored
# per-gene-mean r2 0.691 at w = 1 against 0.672 at 1.5 sampled directly, and 0.836 against 0.823 by way
# of shift_from; w = 1 had the better mean W1, r2 and MMD of both routes on both seeds
# (benchmarks/README.md, "Generation's default guidance, row by row"). generate's default, guidance=None
# ("auto"), gives each row the weight of its kind: a per-row w, so one call may ask for both kinds.
NEVER_SEEN_GUIDANCE = 1.0
# Generation's ODE: 10 midpoint steps (20 network passes) scored like 50 Euler steps (W1 and MMD
# within seed noise on pbmc_3tech x 2 seeds and Baron) at 2.5x fewer passes (benchmarks/README.md).
DEFAULT_SOLVER = "midpoint"
DEFAULT_STEPS = 10
# What a spread calibration pilot is kept under (SAVE._spread_plan's cache key, config.json's spread_pilots).
SPREAD_PILOT_KEY = ("combination", "guidance", "n_steps", "solver", "precision")
# generate(): decoder means of combinations seen in training moved onto their training cells' mean
# (pysave.calibration). 4 seeds, W1 / floor 1.028 against 1.067 on pbmc_3tech and 1.032 against 1.055
# on Baron, MMD 1.348 / 1.361 against 1.389 / 1.374 (benchmarks/README.md, "Combination calibration").
DEFAULT_CALIBRATE = True
# correct(): the decoder path. Through the flow mixes batches better but also mixes cell types when
# batches differ in composition (scIB on CellBench: Bio 0.90 -> 0.63; benchmarks/README.md).
DEFAULT_CORRECT_VIA = "decoder"
CORRECT_VIAS = ("decoder", "flow")
# correct()'s output rescaled to a log1p(CP10k) profile, the input's scale. scIB Total, kl 0.5, batch
# masked, the same 4 models: 0.734 / 0.848 / 0.729 on pbmc_3tech / CellBench / Baron against 0.726 /
# 0.846 / 0.718 for the decoder's mean as it is (benchmarks/README.md, "back on the input's scale").
DEFAULT_CORRECT_NORMALIZE_TOTAL = True

# transfer(): "auto" takes the latent shift wherever it can (a named target value, with training
# cells behind it), else the flow (a masked target; models saved without the shift's statistics).
# The shift is ahead of the flow for perturbation of held-out types (Kang, 7 types x 2 seeds, R^2
# top-100 DEGs 0.872 against 0.836) and for batch transfer (benchmarks/try_batch_transfer.py:
# pbmc_3tech, Baron, CellBench, per-gene means and W1 / MMD to the real cells of the target batch).
DEFAULT_TRANSFER_VIA = "auto"
# "shift": scGen's latent arithmetic in SAVE's latent, decoded under the target conditions.
TRANSFER_VIAS = ("auto", "flow", "decoder", "shift")

# Cells decoded at a time on the CPU: 512 keep the decoder's activations in cache; 4,096 at once
# decoded at 0.6x (paper network) and 0.45x (fast network) the speed (benchmarks/README.md, "Speed").
CPU_DECODE_ROWS = 512

# The flow trains for 2 x max_epochs epochs, but at least this many optimizer steps. 400 steps left
# it ignoring its conditions (generated B cells looked like T cells); 4,000 fixed that; 8,000 (the
# default since 2026-12-06) lowered W1 / floor on 11 of 12 generation dataset-seeds (pbmc_3tech,
# Baron, pbmc4k, scVelo; mean -0.017x) and MMD on 9 of 12, for 1.2-1.7x the harness's wall time. It
# binds only on small data: with the scvi-tools epoch rule, sets above ~2,600 cells get more steps
# from 2 x max_epochs (the harness trains 60 VAE epochs, so there it binds).
MIN_FLOW_STEPS = 8000
# The VAE's lr ramps up over its first 2 epochs (never more than a quarter of max_epochs). A quarter
# of max_epochs, the paper's 50 of 200, outlasted the early-stopped run (best epoch 49-59 of a
# 100-epoch ramp): its best validation loss was 1.5-2.1% worse on all 4 datasets measured
# (benchmarks/README.md, "Learning-rate warm-up").
VAE_WARMUP_EPOCHS = 2
MAX_VALIDATION_CELLS = 10_000  # enough for early stopping; keeps a backed run's memory flat
# Posterior collapse check after VAE training: a latent dimension is "active" when its encoder
# mean varies across the training cells by more than ACTIVE_LATENT_VARIANCE (Burda et al. 2016's
# active units). Healthy models here have 40-128 active of 128; a collapsed one had 0.
ACTIVE_LATENT_VARIANCE = 0.01
MIN_ACTIVE_LATENT_DIMS = 2


def check_flag(name: str, value) -> bool:
    """A True/False argument as a bool; anything else (a string, None, a number) is refused by name."""
    if not isinstance(value, (bool, np.bool_)):
        raise PySaveError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_guidance(guidance, auto: bool = False) -> float | None:
    """A guidance weight as a float: a finite real number, or None (generation's per-row default,
    where ``auto``). Refused by name otherwise (NaN would make every cell NaN)."""
    if guidance is None and auto:
        return None
    if isinstance(guidance, (bool, np.bool_)) or not isinstance(guidance, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(guidance)):
        default = (", or left at its default (None in Python, NULL in R, no --guidance on the CLI: "
                   f"{DEFAULT_GUIDANCE:g} for combinations seen in training, {NEVER_SEEN_GUIDANCE:g} for never-seen ones)"
                   if auto else "")
        raise PySaveError(f"guidance must be a finite number, e.g. 1 for the plain conditional model{default}; "
                          f"got {guidance!r}.")
    return float(guidance)


def check_torch_compile(torch_compile, device: torch.device) -> bool:
    """Generation's ``torch_compile``: a bool, and with True a toolchain inductor can build with,
    checked before any cell is generated or any file is begun."""
    if check_flag("torch_compile", torch_compile):
        cpu_toolchain(device, "generate")
    return bool(torch_compile)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise PySaveError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PySaveError(f"device {device!r} was asked for but no CUDA GPU is available; use device='cpu' or 'auto'.")
    return dev


class SAVE:
    """SAVE: gene-block attention VAE + latent flow matching, conditioned on obs columns.

    Parameters (all stored with the model; see the README for why each default was chosen)
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, raw counts in X or the registered layer.
    gene_embeddings
        ``"data"`` (co-expression embedding of the training data), ``"random"``, or a path to a
        CSV/TSV/NPZ/parquet file of gene vectors (genes missing from it are placed by "data").
    block_size, n_blocks
        Genes per block K, or number of blocks L (default: 32 blocks, at least 8 genes each).
    likelihood
        ``"bernoulli"`` (BCE on [0, 1] values, the lab's choice), ``"gaussian"`` (MSE) or ``"nb"``
        (negative binomial on counts).
    hidden_size, condition_dim, latent_dim, latent_token_size, n_encoder_layers, n_decoder_layers, n_heads
        VAE shape; paper: m = 256, e = 512, d = 128, K_l = 8, 3 + 3 blocks, 4 heads.
    decoder_head_size
        Width of the decoder's last hidden layer, between its flattened tokens and the genes
        (default: ``hidden_size``). ``0`` is the paper's eq. (6), a direct linear map, which
        needs tokens x hidden x genes weights (10^8 at 30,000 genes) and scored no better.
    feed_forward_size
        Width of the feed-forward layer inside each of the VAE's Transformer blocks (default:
        4 x ``hidden_size``, as in DiT; the paper does not fix it). ``2 x hidden_size`` trains
        the VAE faster on CPUs (benchmarks/README.md, "A narrower feed-forward layer").
    gelu_approximate
        The feed-forward activation of every Transformer block and of the decoder head:
        ``"none"`` (exact GELU, the default) or ``"tanh"`` (its tanh approximation, as in DiT).
        torch's CPU kernel for the tanh form took 2.8x as long (bf16, forward and backward), so
        exact GELU trains 1.05x (fp32) to 1.09x (bf16) and samples 1.07-1.09x as fast on the
        CPU. Models saved before 2026-12-05 used ``"tanh"`` and load with it.
    flow_hidden_size, flow_layers, flow_token_size, flow_heads, flow_condition_dim
        Shape of the flow-matching Transformer over latent tokens, and the size of its summed
        time + condition embedding.
    mask_prob
        Probability of masking each condition while training the flow (default 0.15; the paper's
        0.6 generated worse in our benchmarks, README "Defaults").
    mask_all_prob
        Probability of masking all of a cell's conditions at once while training the flow, on
        top of ``mask_prob``. Classifier-free guidance takes its unconditional velocity from the
        flow with every condition masked; with per-condition masking alone, a cell shows that
        case with probability ``mask_prob ** K`` for K conditions (0.05% at 0.15 with 4), so this
        (default 0.1) keeps it trained however many conditions there are.
    vae_mask_prob
        The same for the VAE, so that it can encode and decode with a condition left out. At 0
        its [MASK] rows stay untrained, and encoding or decoding with a condition masked (a
        condition left out of ``generate``, ``correct()``'s default masked batch) warns.
    kl_weight
        Weight of the KL term. The lab's VAE used 0.5 because it sampled from N(0, I); with a
        flow as the prior the latent need not match N(0, I), and 0.5 collapsed it (KL ~5 nats,
        decoded cells near the population mean), so the default is 0.05. For batch correction
        and integration, 0.5 is better (scIB Total 0.72 / 0.87 / 0.73 on three datasets over 4
        seeds, against 0.66 / 0.78 / 0.67 at 0.05), but such a model generates worse cells and
        predicts perturbations worse (at 0.2 already: R^2 top-100 DEGs 0.68 vs 0.87).
        Training warns when the latent has collapsed (fewer than 2 dimensions whose encoder
        mean varies across cells) and records the count in ``training_summary["active_latent_dims"]``.
    seed
        Seeds gene-block clustering, weight initialisation and, by default, training.
    """

    def __init__(self, adata, verbose: bool = True, **params):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise PySaveError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}.")
        self.params = {**DEFAULTS, **params}
        self._validate_params()
        self.verbose = verbose
        self.registry = D.get_registry(adata)
        D.validate_shape(adata)
        var = pd.Index(adata.var_names.astype(str))
        if not var.is_unique:
            dup = var[var.duplicated()].unique()[:5].tolist()
            raise PySaveError(f"gene names are not unique (e.g. {dup}); call adata.var_names_make_unique() first.")
        self.genes = var.tolist()
        codes = D.encode_conditions(adata.obs, self.registry)
        scaler_index = self._scaler_index(codes)
        what = "adata.X" if self.registry["layer"] is None else f"layer {self.registry['layer']!r}"
        keep_counts = self.params["likelihood"] == "nb"
        if getattr(adata, "isbacked", False):
            # Out of core: one streaming pass for the statistics; cells are read chunk by chunk later.
            X = self._backed_matrix(adata)
            sample = embedding_sample_rows(X.shape[0], self.params["seed"])
            self._log(f"backed AnnData: computing statistics over {X.shape[0]} cells in one streaming pass")
            library, self.scalers, x01_sample = loader.backed_statistics(
                X, None, scaler_index, self._n_scaler_rows(), sample, what, log=self._log)
            self._data = loader.BackedSource(X, None, library, self.scalers, codes, scaler_index, keep_counts)
        else:
            X = D.counts_matrix(adata, self.registry["layer"])
            library = D.check_counts(X, what)
            self.scalers = D.fit_scalers(X, library, scaler_index, self._n_scaler_rows())
            x01 = D.preprocess(X, library, self.scalers, scaler_index)
            counts = sp.csr_matrix(X, dtype=np.float32) if keep_counts else None
            self._data = loader.InMemorySource(x01, counts, codes, scaler_index)
            x01_sample = x01
        self.library_stats = D.library_statistics(library, codes, scaler_index, self._n_scaler_rows())
        self.adata = adata
        self.blocks = build_gene_blocks(
            self.genes, x01_sample, self.params["gene_embeddings"], self.params["block_size"], self.params["n_blocks"],
            seed=self.params["seed"], log=self._log,
        )
        self.latent_mean = torch.zeros(self.params["latent_dim"])
        self.latent_std = torch.ones(self.params["latent_dim"])
        self.device = torch.device("cpu")
        self.history: dict = {}
        self.training_summary: dict = {}
        self.is_trained = False
        self._spread_pilots: dict = {}  # {SPREAD_PILOT_KEY values: spread_factors' (centre scores, factors)}
        torch.manual_seed(self.params["seed"])
        self._build_networks()

    # ------------------------------------------------------------------ registration
    setup_anndata = staticmethod(D.setup_anndata)

    def _validate_params(self) -> None:
        p = self.params
        for key, minimum in INTEGER_PARAMS.items():
            p[key] = _as_integer(key, p[key], minimum)
        if p["likelihood"] not in LIKELIHOODS:
            raise PySaveError(f"likelihood must be one of {LIKELIHOODS}, got {p['likelihood']!r}.")
        if p["gelu_approximate"] not in GELU_FORMS:
            raise PySaveError(f"gelu_approximate must be one of {GELU_FORMS} ('none': exact GELU, the default; 'tanh': the "
                              f"approximation of models saved before 2026-12-05), got {p['gelu_approximate']!r}.")
        for key in ("mask_prob", "mask_all_prob", "vae_mask_prob"):
            if not 0.0 <= float(p[key]) < 1.0:
                raise PySaveError(f"{key} must be in [0, 1), got {p[key]}.")
        if p["latent_dim"] % p["latent_token_size"] or p["latent_dim"] % p["flow_token_size"]:
            raise PySaveError("latent_dim must be a multiple of latent_token_size and of flow_token_size.")
        if p["hidden_size"] % p["n_heads"] or p["flow_hidden_size"] % p["flow_heads"]:
            raise PySaveError("hidden sizes must be multiples of their number of attention heads.")

    def _log(self, message: str) -> None:
        if self.verbose:
            _log(message)

    def _stages(self, task: str, n_cells: int, batch_size: int):
        """A reporter of a call's stages ("task: stage (N s)" since now), silent for calls of one
        batch: long transfers and corrections show how far they got."""
        began = time.perf_counter()

        def report(stage: str) -> None:
            if n_cells > batch_size:
                self._log(f"{task}: {stage} ({time.perf_counter() - began:.0f} s)")
        return report

    def _batch_column(self) -> int | None:
        key = self.registry.get("batch_key")
        return None if key is None else self.registry["condition_keys"].index(key)

    def _n_scaler_rows(self) -> int:
        j = self._batch_column()
        return 1 if j is None else len(self.registry["categories"][self.registry["batch_key"]]) + 1

    def _scaler_index(self, codes: np.ndarray) -> np.ndarray:
        j = self._batch_column()
        return np.zeros(len(codes), dtype=np.int64) if j is None else codes[:, j].astype(np.int64)

    def _n_categories(self) -> list[int]:
        return [len(self.registry["categories"][k]) for k in self.registry["condition_keys"]]

    def _build_networks(self) -> None:
        p = self.params
        self.vae = BlockAttentionVAE(
            torch.as_tensor(self.blocks.index), len(self.genes), self._n_categories(),
            hidden=p["hidden_size"], cond_dim=p["condition_dim"], latent_dim=p["latent_dim"],
            latent_token_size=p["latent_token_size"], n_encoder_layers=p["n_encoder_layers"],
            n_decoder_layers=p["n_decoder_layers"], n_heads=p["n_heads"], dropout=p["dropout"],
            likelihood=p["likelihood"], decoder_head_size=p["decoder_head_size"], gelu_approximate=p["gelu_approximate"],
            feed_forward_size=p["feed_forward_size"],
        )
        self.flow = VelocityField(
            p["latent_dim"], self._n_categories(), token_size=p["flow_token_size"], hidden=p["flow_hidden_size"],
            depth=p["flow_layers"], n_heads=p["flow_heads"], cond_dim=p["flow_condition_dim"],
            gelu_approximate=p["gelu_approximate"],
        )

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        flow_epochs: int | None = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        flow_lr: float = 1e-3,
        weight_decay: float = 2.5e-5,
        warmup_epochs: int | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        early_stopping_patience: int = 20,
        seed: int | None = None,
        device: str = "auto",
        progress: bool = True,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 10,
        resume: bool = False,
        precision: str = "auto",
        chunk_size: int | None = None,
        torch_compile: bool = False,
    ) -> "SAVE":
        """Train the VAE, then the flow on its latent space.

        ``max_epochs`` defaults to min(400, round(400 * 20000 / n_cells)) as in scvi-tools;
        ``flow_epochs`` to 2 x max_epochs but at least 8,000 optimizer steps (the flow trains on
        cached latents, is cheap, and needs many steps before it follows its conditions);
        ``warmup_epochs`` (linear lr ramp) to 2 for the VAE and a quarter of the epochs for the
        flow; a value given applies to both. Early stopping ends the VAE
        after ``early_stopping_patience`` epochs without a better validation loss and keeps the
        weights of its best epoch. The flow runs all ``flow_epochs`` and keeps its last weights,
        as the paper trains a fixed number of epochs: its validation loss is flat for most of
        its training, so the lowest point is noise (its loss is still recorded in ``history``).

        With ``checkpoint_dir``, the full training state is written there every
        ``checkpoint_every`` epochs (safetensors + JSON, no pickle); ``resume=True`` continues
        from it and ends with the same weights as an uninterrupted run with the same seed.

        A model made from a backed AnnData (``anndata.read_h5ad(path, backed="r")``) streams
        its cells from disk: ``chunk_size`` rows per sequential read (default 4,096), 8 chunks
        shuffled together per buffer. The validation split holds at most 10,000 cells.
        Under ``torchrun`` the cells are shared out over the processes and gradients are
        averaged with DistributedDataParallel; ``batch_size`` is the global batch.
        ``precision``: ``"32"``, ``"bf16"`` (autocast) or ``"auto"`` (bf16 on CUDA, 32 on CPU).
        ``torch_compile=True`` compiles the VAE's Transformers with ``torch.compile`` for its
        training: on a 2-core CPU 1.34x faster in bf16 (~1.1x in fp32), after a one-off
        compilation of 95-112 s (about 11 s when torch's on-disk cache already holds it), so it
        pays on long runs over many cells (about a million cell-epochs). On the CPU it needs a
        C++ compiler. The weights differ from an uncompiled run's by rounding only, and the same
        seed gives the same model again.
        """
        if self._data is None:
            raise PySaveError("this model was loaded without training data; create a new SAVE(adata) to train.")
        n_cells = self._data.n_cells
        if max_epochs is None:
            max_epochs = int(min(400, max(1, round(400 * 20_000 / n_cells))))
        steps = math.ceil(n_cells * (1 - validation_fraction) / batch_size) if batch_size > 0 else 1
        if flow_epochs is None:
            flow_epochs = max(2 * max_epochs, math.ceil(MIN_FLOW_STEPS / max(1, steps)))
        for name, value in (("max_epochs", max_epochs), ("flow_epochs", flow_epochs), ("batch_size", batch_size)):
            if int(value) < 1:
                raise PySaveError(f"{name} must be a positive integer, got {value}.")
        if warmup_epochs is not None and int(warmup_epochs) < 0:
            raise PySaveError(f"warmup_epochs must be 0 (no warm-up) or a positive number of epochs, or None for the default; got {warmup_epochs}.")
        warmups = {"vae": int(warmup_epochs) if warmup_epochs is not None else max(1, min(VAE_WARMUP_EPOCHS, max_epochs // 4)),
                   "flow": int(warmup_epochs) if warmup_epochs is not None else max(1, flow_epochs // 4)}
        if chunk_size is not None and int(chunk_size) < 1:
            raise PySaveError(f"chunk_size must be a positive number of cells, got {chunk_size}.")
        if not 0.0 <= validation_fraction < 1.0:
            raise PySaveError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
        seed = self.params["seed"] if seed is None else int(seed)
        fingerprint = json.loads(json.dumps({
            "n_cells": n_cells, "genes": hashlib.sha256("\n".join(self.genes).encode()).hexdigest(),
            "params": fingerprint_params(self.params), "max_epochs": max_epochs, "flow_epochs": flow_epochs, "batch_size": batch_size,
            "lr": lr, "flow_lr": flow_lr, "weight_decay": weight_decay, "warmup_epochs": warmups,
            "validation_fraction": validation_fraction, "early_stopping": early_stopping,
            "early_stopping_patience": early_stopping_patience, "seed": seed, "precision": precision,
            "chunk_size": chunk_size,
            **({"torch_compile": True} if torch_compile else {}),  # absent when off: older checkpoints still resume
        }))
        checkpoint = None
        if resume:
            if checkpoint_dir is None:
                raise PySaveError("resume=True needs checkpoint_dir (CLI: the checkpoint beside --out).")
            checkpoint = io.load_checkpoint(checkpoint_dir)
            if checkpoint.get("fingerprint") != fingerprint:
                differ = "; ".join(fingerprint_differences(checkpoint.get("fingerprint") or {}, fingerprint)[:6])
                raise PySaveError(f"the checkpoint in {checkpoint_dir!r} comes from a different run (other data, parameters "
                                  f"or training options: {differ}); resume with exactly the same command (a checkpoint "
                                  "written before pysave's defaults changed needs the values it was trained with), "
                                  "or train without --resume.")
            self._log(f"resuming from the {checkpoint['stage']} checkpoint in {checkpoint_dir}")

        def saver(stage: str, extra: dict):
            if checkpoint_dir is None:
                return None
            return lambda snap: io.save_checkpoint(checkpoint_dir, {"fingerprint": fingerprint, "stage": stage, "fit": snap, **extra})

        def resumed(stage: str):
            return checkpoint["fit"] if checkpoint is not None and checkpoint["stage"] == stage else None

        if precision not in PRECISIONS + ("auto",):
            raise PySaveError(f"precision must be one of {PRECISIONS + ('auto',)}, got {precision!r}.")
        dev = dist_utils.init_from_env(resolve_device(device))
        precision = resolve_precision(precision, dev)  # auto: bf16 on CUDA, fp32 on the CPU (resolve_precision says why)
        world, rank = dist_utils.world_size(), dist_utils.rank()
        if batch_size % world:
            raise PySaveError(f"batch_size {batch_size} is the global batch and must be a multiple of the {world} processes.")
        per_rank = batch_size // world
        verbose, self.verbose = self.verbose, self.verbose and rank == 0
        self.device = dev
        self.vae.to(dev)
        self.flow.to(dev)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n_cells)
        n_val = min(int(round(validation_fraction * n_cells)), MAX_VALIDATION_CELLS)
        if n_val < 2 and validation_fraction > 0:
            n_val = 0
            self._log("too few cells for a validation split; training without validation and early stopping")
        val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
        steps = math.ceil(len(train_rows) / batch_size)
        # The VAE's validation loss falls to one minimum and rises after it, so it stops after
        # `early_stopping_patience` epochs without a new best (benchmarks/README.md, "Early stopping").
        # The flow's is flat from early on while its training loss still falls: stopping on it cut a
        # flow to 37% of its epochs at a noise minimum, and keeping the last epoch lowered generation's
        # MMD on 13 of 16 dataset-seeds (benchmarks/README.md, "The flow's last epoch, made the default").
        vae_patience = early_stopping_patience if early_stopping and n_val > 0 else None
        data = self._data
        member = np.zeros(n_cells, dtype=bool)
        member[train_rows] = True
        chunk = (chunk_size or loader.DEFAULT_CHUNK_SIZE) if data.backed else chunk_size
        val_data = data.take(val_rows) if n_val else None  # at most MAX_VALIDATION_CELLS, kept in memory
        val_lo, val_hi = dist_utils.shard_range(n_val)

        def vae_batches(epoch):
            return loader.shuffled_batches(data, member, per_rank, seed, epoch, dev, chunk_size=chunk, rank=rank, world=world)

        def vae_val():
            return loader.contiguous_batches(val_data, per_rank, dev, val_lo, val_hi)

        vae_mask = float(self.params["vae_mask_prob"])
        kl_weight = float(self.params["kl_weight"])

        def vae_loss(batch, generator):
            x, codes, counts = batch
            codes = self.vae.condition_embedding.random_mask(codes, vae_mask if self.vae.training else 0.0, generator)
            return self.vae.loss(x, codes, counts, kl_weight=kl_weight, generator=generator)

        where = f"device {dev}" + (f", {world} processes" if world > 1 else "") + (", backed (streamed from disk)" if data.backed else "")
        self._log(f"training the VAE on {len(train_rows)} cells ({n_val} for validation), {len(self.genes)} genes, "
                  f"{self.blocks.n_blocks} blocks of {self.blocks.block_size}, {where}")
        if checkpoint is not None and checkpoint["stage"] == "flow":
            self.vae.load_state_dict(checkpoint["vae_final"])
            self.vae.eval()
            vae_result = checkpoint["vae_result"]
        else:
            with compiled([self.vae.encoder.transformer, self.vae.decoder.transformer], bool(torch_compile), dev, self._log):
                vae_result = fit(
                    self.vae, vae_loss, vae_batches, vae_val if n_val else None,
                    max_epochs, steps, lr, weight_decay, warmups["vae"],
                    vae_patience, dev, seed, "VAE", self._log, progress and self.verbose,
                    resume=resumed("vae"), on_checkpoint=saver("vae", {}), checkpoint_every=checkpoint_every,
                    precision=precision,
                )

        # Flow stage: standardised posterior samples of the trained encoder, fresh each epoch.
        # Each rank encodes its share of the cells once; the latents are then shared by all.
        lo, hi = dist_utils.shard_range(n_cells)
        mu, logvar = self._encode(data, dev, start=lo, stop=hi)
        shares = [(n_cells * (r + 1)) // world - (n_cells * r) // world for r in range(world)]
        mu = dist_utils.all_gather_rows(mu.to(dev), shares).cpu()
        std = torch.exp(0.5 * dist_utils.all_gather_rows(logvar.to(dev), shares).cpu())
        del logvar
        self.latent_mean, self.latent_std = _latent_moments(mu, std, train_rows, seed)
        active_dims = active_latent_dims(mu, train_rows)
        if active_dims < MIN_ACTIVE_LATENT_DIMS and rank == 0:
            warn_user(collapse_message(active_dims, mu.shape[1], self.params["kl_weight"]))
        latents = condition_latent_means(mu, data.codes)
        pcs, positions = expression_pcs(data, self.scalers, seed)
        self.condition_latents = {**latents, **pcs, **kept_shift_cells(mu, positions, data.codes, seed)}
        if self.params["likelihood"] != "nb":  # offsets in E[log1p(CP10k)], which the NB decoder's count-scale mean is not
            self.condition_latents.update(self._combination_offsets(data, mu, len(latents["codes"]), seed))
        codes_all = torch.from_numpy(data.codes)
        gen = torch.Generator().manual_seed(seed + 1)
        val_t = torch.from_numpy(val_rows)
        z_val = (mu[val_t] + std[val_t] * torch.randn(len(val_rows), mu.shape[1], generator=gen) - self.latent_mean) / self.latent_std
        mask_prob, mask_all_prob = float(self.params["mask_prob"]), float(self.params["mask_all_prob"])
        train_t = torch.from_numpy(train_rows)

        def flow_batches(epoch):
            g = torch.Generator().manual_seed(seed * 1000 + max(epoch, 0))
            perm = torch.randperm(len(train_t), generator=g)
            if world > 1:
                perm = perm[: len(perm) // world * world][rank::world]
            for start in range(0, len(perm), per_rank):
                sel = train_t[perm[start:start + per_rank]]
                z = mu[sel] + std[sel] * torch.randn(len(sel), mu.shape[1], generator=g)
                yield ((z - self.latent_mean) / self.latent_std).to(dev), codes_all[sel].to(dev)

        def flow_val():
            c = codes_all[val_t]
            for start in range(val_lo, val_hi, per_rank):
                stop = min(start + per_rank, val_hi)
                yield z_val[start:stop].to(dev), c[start:stop].to(dev)

        def flow_loss(batch, generator):
            x1, codes = batch
            return {"loss": self.flow.loss(x1, codes, mask_prob, generator, mask_all_prob)}

        self._log(f"training the flow on {mu.shape[1]}-d latents")
        flow_result = fit(
            self.flow, flow_loss, flow_batches, flow_val if n_val else None, flow_epochs, steps, flow_lr, weight_decay,
            warmups["flow"], None, dev, seed + 7, "flow",
            self._log, progress and self.verbose, resume=resumed("flow"),
            on_checkpoint=saver("flow", {"vae_final": self.vae.state_dict(), "vae_result": vae_result}),
            checkpoint_every=checkpoint_every, precision=precision, keep="last",
        )
        self.verbose = verbose
        self.history = {f"vae_{k}": v for k, v in vae_result["history"].items()}
        self.history.update({f"flow_{k}": v for k, v in flow_result["history"].items()})
        self.training_summary = {
            "vae": vae_result["summary"], "flow": flow_result["summary"],
            "n_cells": n_cells, "n_train": int(len(train_rows)), "n_validation": int(n_val),
            "batch_size": batch_size, "lr": lr, "flow_lr": flow_lr, "weight_decay": weight_decay,
            "max_epochs": max_epochs, "flow_epochs": flow_epochs, "warmup_epochs": warmups, "seed": seed, "device": str(dev),
            "processes": world, "precision": precision, "torch_compile": bool(torch_compile), "backed": bool(data.backed),
            "active_latent_dims": active_dims,
        }
        self.is_trained = True
        self._spread_pilots = {}  # pilots of the weights before are stale
        if dist_utils.is_main_process():  # the only process that saves
            start = time.perf_counter()
            self.training_summary["spread_pilots"] = self._train_spread_pilots()
            self.training_summary["spread_pilot_seconds"] = time.perf_counter() - start
        return self

    # ------------------------------------------------------------------ internals
    @torch.no_grad()
    def _encode(self, prep, device=None, batch_size: int = 1024, attention: bool = False, start: int = 0, stop: int | None = None):
        """Encoder means and log-variances (and attention) of rows start..stop, read in order."""
        dev = device or self.device
        self._warn_untrained_mask(prep.codes[start:stop], "encoded")
        self.vae.eval()
        mus, logvars, attn = [], [], []
        for x, codes, _ in loader.contiguous_batches(prep, batch_size, dev, start, stop):
            if attention:
                mu, logvar, w = self.vae.encode(x, codes, return_weights=True)
                # Attention each block receives: mean over heads and query blocks.
                attn.append(w.mean(dim=(1, 2)).cpu())
            else:
                mu, logvar = self.vae.encode(x, codes)
            mus.append(mu.cpu())
            logvars.append(logvar.cpu())
        d = self.params["latent_dim"]
        out = (torch.cat(mus) if mus else torch.zeros(0, d), torch.cat(logvars) if logvars else torch.zeros(0, d))
        return out + (torch.cat(attn),) if attention else out

    def _backed_matrix(self, adata):
        """The counts of a backed AnnData as a lazily read, row-sliceable matrix."""
        layer = self.registry["layer"]
        if layer is None:
            X = adata.X
        else:
            import h5py
            from anndata.io import sparse_dataset

            layers = adata.file._file.get("layers")
            if layers is None or layer not in layers:
                raise PySaveError(f"layer {layer!r} is not in the backed file; name a layer it has, or omit it to use X.")
            X = sparse_dataset(layers[layer]) if isinstance(layers[layer], h5py.Group) else layers[layer]
        if X is None:
            raise PySaveError("the backed AnnData has no X; put raw counts in X or name a counts layer.")
        if getattr(X, "format", None) == "csc":
            raise PySaveError(
                "backed training reads cells (rows) in chunks, but the counts are stored column-wise (CSC), so every "
                "chunk would read the whole file; rewrite the file with CSR counts (adata.X = adata.X.tocsr(); "
                "adata.write_h5ad(...)) or train in memory without --backed.")
        return X

    def _warn_untrained_mask(self, codes, what: str) -> None:
        """A model trained with vae_mask_prob=0 never saw [MASK] in its VAE: that row of the
        condition table is still its random initialisation, so a masked condition gives arbitrary cells."""
        if float(self.params["vae_mask_prob"]) > 0:
            return
        masked = np.asarray(codes) == np.asarray(self.vae.condition_embedding.mask_codes)
        if masked.any():
            keys = [k for k, hit in zip(self.registry["condition_keys"], masked.any(axis=0)) if hit]
            warn_user(f"this model was trained with vae_mask_prob=0, so its VAE never {what} with a condition masked, "
                      f"and {keys} is masked here: the result is arbitrary. Name a value for {keys} (for correct(): "
                      f"reference='all' or a batch), or train with vae_mask_prob > 0.")

    def _combination_offsets(self, data, mu: torch.Tensor, n_combinations: int, seed: int) -> dict:
        """Generation's calibration (``calibration.combination_offsets``) over the cells ``kept_rows``
        keeps of each combination: their log1p(CP10k) minus the decoder mean of their encoder means."""
        rows, groups = kept_rows(data.codes, seed)
        kept, latents, codes = data.take(rows), mu[torch.from_numpy(rows)], data.codes[rows]
        self._log(f"calibrating the decoder's mean of {n_combinations} combinations on {len(rows)} training cells")
        return combination_offsets(lambda a, b: log_normalized_rows(kept, self.scalers, a, b),
                                   lambda a, b: self._decode(latents[a:b], codes[a:b]), groups, n_combinations, seed,
                                   batch=D.dense_block_rows(len(self.genes)))

    def _chunk_rows(self, rows: int) -> int:
        """Cells per chunk of generated or transferred output: ``rows``, fewer at many genes.

        Each chunk holds several dense (cells x genes) copies: at 30,000 genes generation's chunks of
        4,096 cells peaked at 2.9 GB, of 512 at 1.2 GB, as fast. A bounded chunk is whole decoder
        blocks (CPU_DECODE_ROWS), so the decoder sees the rows it would in chunks of ``rows``: over
        other rows it rounds means differently, and rare counts on a rounding edge change
        (docs/reproducibility.md)."""
        bounded = D.dense_block_rows(len(self.genes), rows)
        return rows if bounded >= rows else max(CPU_DECODE_ROWS, bounded - bounded % CPU_DECODE_ROWS)

    @torch.no_grad()
    def _decode(self, z: torch.Tensor, codes: np.ndarray, batch_size: int = 4096, precision: str = "32") -> np.ndarray:
        """Latents -> log-normalized expression (log1p of counts per 10,000)."""
        self._warn_untrained_mask(codes, "decoded")
        self.vae.eval()
        scaler_index = self._scaler_index(codes)
        out = np.empty((z.shape[0], len(self.genes)), dtype=np.float32)
        if self.device.type == "cpu":
            batch_size = min(batch_size, CPU_DECODE_ROWS)
        for start in range(0, z.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            with autocast(self.device, precision):
                mean = self.vae.decode_mean(z[sl].to(self.device), torch.from_numpy(codes[sl]).to(self.device))
            mean = mean.float().cpu().numpy()
            if self.params["likelihood"] == "nb":
                out[sl] = np.log1p(mean * D.TARGET_SUM)
            else:
                out[sl] = mean * self.scalers.values[scaler_index[sl]]
        return out

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise PySaveError("the model is not trained yet; call model.train() (CLI: pysave train) first.")

    def _prepare(self, adata, keep_counts: bool = False):
        """Bring an AnnData into the model's gene space (re-mapping genes by name).

        ``None``, or the AnnData the model was made or loaded with, gives the data already
        prepared for it (with counts only if training kept them). ``keep_counts`` keeps the raw
        counts of the model's genes beside the scaled values (``source.read``).
        """
        if keep_counts and adata is None:
            adata = self.adata  # prepared again below, with its counts; None still raises below
        if adata is None or (adata is self.adata and self._data is not None and not keep_counts):
            if self._data is None:
                raise PySaveError("no data given; pass an AnnData (the model was loaded without its training data).")
            return self._data
        D.validate_shape(adata)
        var = [str(v) for v in adata.var_names]
        columns = None
        if var != self.genes:
            columns = D.align_genes(var, self.genes)
            extra = len(var) - len(self.genes)
            if extra > 0:
                self._log(f"ignoring {extra} gene(s) the model was not trained on; genes were matched by name")
        codes = D.encode_conditions(adata.obs, self.registry, allow_missing=True)
        scaler_index = self._scaler_index(codes)
        if getattr(adata, "isbacked", False):
            X = self._backed_matrix(adata)
            library = loader.backed_library(X, columns)
            return loader.BackedSource(X, columns, library, self.scalers, codes, scaler_index, keep_counts=keep_counts)
        layer = self.registry["layer"]
        if layer is not None and layer not in adata.layers:
            raise PySaveError(f"the model reads counts from layer {layer!r}, which this AnnData lacks; add it (adata.layers[{layer!r}] = counts).")
        X = D.counts_matrix(adata, layer)
        if columns is not None:
            X = X[:, columns]
        library = D.check_counts(X)
        x01 = D.preprocess(X, library, self.scalers, scaler_index)
        return loader.InMemorySource(x01, sp.csr_matrix(X, dtype=np.float32) if keep_counts else None, codes, scaler_index)

    def _code_of(self, key: str, value) -> int:
        keys = self.registry["condition_keys"]
        if key not in keys:
            raise PySaveError(f"{key!r} is not a condition of this model; its conditions are {keys}.")
        cats = self.registry["categories"][key]
        if value is None or value == D.MASK:
            return len(cats)
        if str(value) not in cats:
            raise PySaveError(f"unknown value {value!r} for condition {key!r}; the model knows: {', '.join(cats)}.")
        return cats.index(str(value))

    def _name_of(self, key: str, code: int) -> str:
        """The value a code stands for (the inverse of _code_of)."""
        cats = self.registry["categories"][key]
        return str(cats[code]) if code < len(cats) else D.MASK

    def _obs_from_codes(self, codes: np.ndarray, index) -> pd.DataFrame:
        obs = pd.DataFrame(index=index)
        for j, key in enumerate(self.registry["condition_keys"]):
            cats = self.registry["categories"][key]
            obs[key] = pd.Categorical.from_codes(np.where(codes[:, j] >= len(cats), -1, codes[:, j]), categories=cats)
        return obs

    def _provenance(self, kind: str, extra: dict) -> dict:
        """``uns["pysave"]`` of an output (docs/exchange-format.md)."""
        return {"format_version": io.EXCHANGE_FORMAT_VERSION, "kind": kind, "pysave_version": __version__,
                "X": "log1p(counts per 10,000)", "condition_keys": list(self.registry["condition_keys"]), **extra}

    def _output(self, X: np.ndarray, obs: pd.DataFrame, kind: str, extra: dict):
        import anndata as ad

        out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(self.genes, name=None)))
        out.uns["pysave"] = self._provenance(kind, extra)
        return out

    # ------------------------------------------------------------------ tasks
    def generate(self, conditions: dict | None = None, n_cells: int = 100, **kwargs):
        """Generate ``n_cells`` cells for one combination of conditions.

        Conditions not named are masked (left to the model), so any subset can be given,
        including combinations never seen in training. Returns an AnnData whose X holds
        log-normalized expression in the model's gene space; keyword arguments as
        :meth:`generate_like`.
        """
        return self.generate_like(self.conditions_table(conditions, n_cells), **kwargs)

    def conditions_table(self, conditions: dict | None, n_cells: int) -> pd.DataFrame:
        """A generation table: ``n_cells`` rows of one combination of conditions, checked against the model."""
        conditions = dict(conditions or {})
        if int(n_cells) < 1:
            raise PySaveError(f"n_cells must be at least 1, got {n_cells}.")
        for key, value in conditions.items():
            self._code_of(key, value)
        return pd.DataFrame({k: [v] * int(n_cells) for k, v in conditions.items()}, index=range(int(n_cells)))

    def _generation_plan(self, obs_table: pd.DataFrame, guidance: float | None, n_steps: int, solver: str):
        """Validate the options and expand the table: one row per cell, condition codes."""
        self._require_trained()
        if solver not in SOLVERS:
            raise PySaveError(f"solver must be one of {SOLVERS}, got {solver!r}.")
        self._check_flow_options(guidance, n_steps)
        if hasattr(obs_table, "obs") and isinstance(obs_table.obs, pd.DataFrame):  # an AnnData: cells like these ones
            obs_table = obs_table.obs
        if not isinstance(obs_table, (pd.DataFrame, dict)):
            raise PySaveError(f"the cells to generate are given as a table (pandas DataFrame, e.g. adata.obs, or a dict of "
                              f"columns) or an AnnData whose obs holds the conditions, not a {type(obs_table).__name__}.")
        table = pd.DataFrame(obs_table).reset_index(drop=True)
        if "n_cells" in table.columns:
            counts = pd.to_numeric(table.pop("n_cells"), errors="coerce")
            if counts.isna().any() or (counts < 0).any():
                raise PySaveError("the n_cells column must hold non-negative integers.")
            table = table.loc[table.index.repeat(counts.astype(int))].reset_index(drop=True)
        if len(table) == 0:
            raise PySaveError("nothing to generate: the table has no rows (or all n_cells are 0).")
        known = set(self.registry["condition_keys"])
        if not known & set(table.columns) and len(table.columns):
            raise PySaveError(f"none of the table's columns {list(table.columns)} is a condition of this model ({sorted(known)}).")
        return table, D.encode_conditions(table, self.registry, allow_missing=True)

    def _check_flow_options(self, guidance: float | None, n_steps: int) -> None:
        """Checks shared by everything that integrates the flow (generation, transfer via the flow).
        ``guidance`` as :func:`check_guidance` returned it (its callers check it, each with or
        without generation's None); None is generation's "auto", which needs no check here."""
        if int(n_steps) < 1:
            raise PySaveError(f"n_steps must be at least 1, got {n_steps}.")
        if guidance is not None and guidance != 1.0 and not self._unconditional_field_trained():
            # Guidance mixes in the unconditional field, which only condition masking trains.
            warn_user(f"this model was trained with mask_prob=0 and mask_all_prob=0, so its unconditional field is untrained and "
                      f"guidance={guidance} mixes it in; pass guidance=1 (CLI --guidance 1).")

    def _unconditional_field_trained(self) -> bool:
        """Whether condition masking trained the flow's unconditional velocity, which guidance mixes in."""
        return float(self.params["mask_prob"]) > 0.0 or float(self.params["mask_all_prob"]) > 0.0

    def _guidance_plan(self, guidance: float | None, codes: np.ndarray, found: list) -> tuple:
        """The weight(s) the flow samples ``codes`` with, and what ``uns["pysave"]`` records of them.

        A number is every row's w. None ("auto") gives rows whose combination no training cell
        had (``found``, from :meth:`_never_seen`) ``NEVER_SEEN_GUIDANCE`` and every other row
        (seen, or with a masked condition) ``DEFAULT_GUIDANCE``; both are 1 on a model whose
        unconditional field is untrained. One weight for all rows is passed as a number, so a
        call that asks for one kind samples exactly as with that weight given."""
        if guidance is not None:
            return float(guidance), {"guidance": float(guidance)}
        seen_w, never_w = ((DEFAULT_GUIDANCE, NEVER_SEEN_GUIDANCE) if self._unconditional_field_trained() else (1.0, 1.0))
        never = np.zeros(len(codes), dtype=bool)
        if found:
            # As Calibration.combinations: each distinct row looked up once, not each of millions of cells.
            distinct, inverse = D.distinct_rows(codes)
            unseen = {tuple(int(v) for v in row) for row, _ in found}
            never = np.array([tuple(int(v) for v in row) in unseen for row in distinct])[np.asarray(inverse).reshape(-1)]
        info = {"guidance": "auto", "guidance_seen": float(seen_w), "guidance_never_seen": float(never_w),
                "guidance_never_seen_cells": int(never.sum())}
        if seen_w == never_w or not never.any() or never.all():
            return float(never_w if never.any() else seen_w), info
        return np.where(never, never_w, seen_w).astype(np.float32), info

    def _check_output(self, output: str | None) -> str:
        """The output kind to produce. ``None`` is the default: "sample", or "mean" for a model
        directory saved before library-size statistics existed (it cannot sample)."""
        if output is None:
            if getattr(self, "library_stats", None):
                return DEFAULT_OUTPUT
            self._log("this model directory has no library-size statistics (saved by an older pysave): "
                      "writing the decoder mean (output='mean'); retrain to get sampled cells")
            return "mean"
        if output not in OUTPUT_KINDS:
            raise PySaveError(f"output must be one of {OUTPUT_KINDS}, got {output!r}.")
        if output == "sample" and not getattr(self, "library_stats", None):
            raise PySaveError("this model directory has no library-size statistics (saved by an older pysave), so it "
                              "cannot sample counts; use output='mean' (CLI: --output-kind mean) or retrain the model.")
        return output

    def _output_sampler(self, output: str, seed: int):
        """A function (log-normalized decoder means, codes) -> X of the requested output kind.

        Sampling uses its own random streams, seeded by ``seed``: library sizes from one stream
        consumed cell by cell, counts from one stream per run of cells (:class:`data.CountStreams`,
        drawn on several threads), so the result does not depend on the chunk size or the
        number of threads, and the flow's latents stay the same as with output="mean"."""
        if output == "mean":
            return lambda x, codes: x
        library_rng, count_streams = np.random.default_rng([int(seed), 101]), D.CountStreams(seed)
        theta = None
        if self.params["likelihood"] == "nb":
            theta = self.vae.log_theta.detach().exp().cpu().numpy().astype(np.float64)

        # The NB decoder's mean is on the count scale; the others output expected log1p(CP10k).
        rates = "fraction" if self.params["likelihood"] == "nb" else SAMPLE_RATES

        def sample(x, codes):
            mean, sd = D.library_parameters(self.library_stats, codes, self._scaler_index(codes))
            return D.sample_counts(x, mean, sd, library_rng, count_streams, theta, rates=rates)

        return sample

    @staticmethod
    def _count_streams_note(output: str) -> dict:
        """What ``uns["pysave"]`` records of how sampled counts were drawn: the cells that share one
        random stream (absent from outputs before 2026-12-07, whose whole call shared one)."""
        return {"count_stream_cells": int(D.COUNT_STREAM_ROWS)} if output == "sample" else {}

    def _precision(self, precision: str) -> str:
        """The sampling precision to use: "auto" is full precision on every device.

        Not bf16 on CUDA, as for training: there the decoder's rounding depends on the batch size
        (on an H200, 11% of sampled values changed between batch sizes 4,096 and 64), which would
        break "the same seed gives the same cells whatever batch_size". fp32 cost 16% of the
        speed of decoder means there (24,262 against 28,771 cells/s); sampled counts, whose drawing
        on the CPU took 88% of the time, were not timed in fp32 (benchmarks/README.md, "On a GPU").
        """
        if precision == "auto":
            return SAMPLING_AUTO_PRECISION
        try:
            return resolve_precision(precision, self.device)
        except ValueError as err:
            raise PySaveError(f"{err} bf16 samples faster on GPUs and CPUs with native bf16 (benchmarks/README.md).") from None

    def _generated_chunks(self, codes: np.ndarray, guidance: float | np.ndarray, n_steps: int, solver: str, seed: int, batch_size: int,
                          output: str = "mean", precision: str = "32", shift: dict | None = None,
                          calibration: Calibration | None = None, torch_compile: bool = False):
        """Yield (start, log-normalized expression, latent) chunk by chunk, in order.

        With ``shift`` (from :meth:`_shift_plan`) the flow samples under ``shift["source"]``,
        and the latents take the latent shift to ``codes``. With ``calibration`` (from
        :meth:`_calibration_plan`) the decoder means get their combination's offset, also where
        the shift places the sampled cells by their decoded expression. ``guidance``: one w, or
        one per row of ``codes`` (from :meth:`_guidance_plan`)."""
        # A CPU generator on every device: sample_latents draws the starting noise from it in order,
        # so the same seed gives the same cells whatever the batch size (CUDA's would not).
        generator = torch.Generator().manual_seed(int(seed))
        finish = self._output_sampler(output, seed)
        batch_size = self._chunk_rows(batch_size)

        def decode(z: torch.Tensor, codes: np.ndarray) -> np.ndarray:
            decoded = self._decode(z, codes, precision=precision)
            return decoded if calibration is None else calibration.apply(decoded, codes)

        self.flow.eval()
        # Compiled for the whole call, undone when the generator ends or is closed.
        with compiled([self.flow.transformer], torch_compile, self.device, self._log, task="generate"):
            for start in range(0, len(codes), batch_size):
                chunk = codes[start:start + batch_size]
                sampled_under = chunk if shift is None else shift["source"][start:start + batch_size]
                weight = (torch.from_numpy(guidance[start:start + batch_size]) if isinstance(guidance, np.ndarray)
                          else float(guidance))
                with autocast(self.device, precision):
                    z = sample_latents(self.flow, torch.from_numpy(sampled_under).to(self.device), weight, int(n_steps),
                                       solver, generator).float().cpu()
                z = z * self.latent_std + self.latent_mean
                if shift is not None:  # weighed by where the sampled cells' decoded expression lies
                    z, _ = self._shifted(z, sampled_under, chunk, shift["changed"], shift["bandwidth"], "generate without shift_from",
                                         expression=lambda stats: expression_positions(stats, decode(z, sampled_under)),
                                         neighbours=shift["neighbours"], transport=shift["transport"])
                yield start, finish(decode(z, chunk), chunk), z.numpy()

    def _calibration_plan(self, calibrate: bool, codes: np.ndarray) -> tuple[Calibration | None, dict]:
        """Generation's calibration (or None) and what to record of it in ``uns["pysave"]``."""
        if not check_flag("calibrate", calibrate):
            return None, {"calibrated": False}
        stats = getattr(self, "condition_latents", None) or {}
        why = missing_reason(stats, self.params["likelihood"])
        if why:
            self._log(f"generating without calibration: {why}")
            return None, {"calibrated": False, "calibration_skipped": why}
        calibration = Calibration(stats)
        return calibration, {"calibrated": True, "calibrated_cells": int((calibration.combinations(codes) >= 0).sum()),
                             "calibration_min_cells": MIN_CALIBRATION_CELLS}

    def _spread_plan(self, calibration: Calibration | None, codes: np.ndarray, weights, n_steps: int, solver: str,
                     precision: str, shift: dict | None) -> dict:
        """Sets ``calibration``'s spread factors for the seen combinations of ``codes`` (one pilot
        draw each, :mod:`pysave.calibration`) and returns what ``uns["pysave"]`` records of it."""
        if calibration is None:
            return {}
        stats = self.condition_latents
        why = "shift_from places the cells by another combination's draw" if shift is not None else self._spread_unavailable()
        if why:
            return {"spread_calibrated_cells": 0, "spread_skipped": why}
        variances = training_pc_variances(stats)
        combination = calibration.combinations(codes)
        # Each combination's rows share one weight: its first row's (one lookup, not a scan per combination).
        present, first_row = np.unique(combination, return_index=True)
        keys = {int(j): (int(j), float(weights) if np.isscalar(weights) else float(weights[r]), int(n_steps), solver, precision)
                for j, r in zip(present, first_row) if j >= 0 and int(j) in variances}
        components = np.asarray(stats["pc_components"], np.float32)
        spread = {}
        # Pilots are kept with the model (cleared by train(), which then draws the default settings'
        # ones; saved in the model directory): a second call at the same settings draws none.
        cache = self._spread_pilots
        fresh = sum(key not in cache for key in keys.values())
        if fresh and self.verbose:
            self._log(f"calibrating the spread of {fresh} combination(s) on pilot draws of {SPREAD_PILOT_CELLS} cells")
        for j, key in keys.items():
            if key not in cache:
                cache[key] = self._spread_pilot(key, calibration, components, variances[j])
            spread[j] = cache[key]
        calibration.set_spread(components, spread)
        return {"spread_calibrated_cells": int(np.isin(combination, list(keys)).sum()), "spread_pilot_cells": SPREAD_PILOT_CELLS,
                "spread_min_cells": SPREAD_MIN_CELLS, "spread_max_factor": SPREAD_MAX_FACTOR}

    def _spread_pilot(self, key: tuple, calibration: Calibration, components: np.ndarray, training_variance: np.ndarray) -> tuple:
        """The spread factors of one pilot draw, ``key`` = (combination, w, steps, solver, precision).

        A fresh generator and count streams per combination: its factors do not depend on the
        other combinations of a call, its seed or its chunks."""
        j, weight, n_steps, solver, precision = key
        pilot = np.repeat(np.asarray(self.condition_latents["codes"][j], dtype=np.int64)[None], SPREAD_PILOT_CELLS, axis=0)
        self.flow.eval()
        with autocast(self.device, precision):
            z = sample_latents(self.flow, torch.from_numpy(pilot).to(self.device), float(weight), int(n_steps), solver,
                               torch.Generator().manual_seed(SPREAD_PILOT_SEED)).float().cpu()
        means = calibration.apply(self._decode(z * self.latent_std + self.latent_mean, pilot, precision=precision), pilot)
        samples = self._output_sampler("sample", SPREAD_PILOT_SEED)(means.copy(), pilot)
        return spread_factors(means, samples, components, training_variance)

    def _spread_unavailable(self) -> str | None:
        """Why this model cannot calibrate the spread of any call (a calibrated one), or None."""
        if "cell_positions" not in self.condition_latents:
            return "this model directory has no training cells' positions (saved by an older pysave)"
        if not getattr(self, "library_stats", None):
            return "this model directory has no library-size statistics to draw a pilot's counts"
        return None

    def _train_spread_pilots(self) -> int:
        """Draw the pilots of generation's default sampler settings for the ``SPREAD_TRAINED_PILOTS``
        combinations with the most kept cells (the model directory keeps them, so a default call
        after training or loading draws none); returns how many were drawn."""
        stats = self.condition_latents
        if missing_reason(stats, self.params["likelihood"]) or self._spread_unavailable():
            return 0
        variances = training_pc_variances(stats)
        calibration = Calibration(stats)
        # The combinations a call would widen (_spread_plan): calibrated, and with a training variance.
        seen = [int(j) for j in calibration.combinations(np.asarray(stats["codes"])) if j >= 0 and int(j) in variances]
        kept = np.bincount(np.asarray(stats["cell_groups"]), minlength=len(stats["codes"]))
        seen = sorted(seen, key=lambda j: (-kept[j], j))[:SPREAD_TRAINED_PILOTS]
        weight, _ = self._guidance_plan(None, np.asarray(stats["codes"]), [])  # "auto": every row seen
        components = np.asarray(stats["pc_components"], np.float32)
        if seen:
            self._log(f"drawing the spread calibration's pilots of {len(seen)} combination(s) at generation's default settings")
        for j in seen:
            key = (j, float(weight), DEFAULT_STEPS, DEFAULT_SOLVER, self._precision("auto"))
            self._spread_pilots[key] = self._spread_pilot(key, calibration, components, variances[j])
        return len(seen)

    def _shift_plan(self, codes: np.ndarray, shift_from: dict | None, bandwidth: float, neighbours: int) -> dict | None:
        """Generation with ``shift_from``: the codes the flow samples under (the table's, with
        ``shift_from``'s values in its columns) and the columns the latent shift then changes."""
        if shift_from is None:
            return None
        if not isinstance(shift_from, dict) or not shift_from:
            raise PySaveError(f"shift_from must be a dict of condition -> value to sample under, e.g. "
                              f"{{'condition': 'control'}}; got {shift_from!r}.")
        check_shift_bandwidth(bandwidth)
        check_shift_neighbours(neighbours)
        keys = self.registry["condition_keys"]
        source = codes.copy()
        for key, value in shift_from.items():
            code = self._code_of(key, value)
            if code == self.vae.condition_embedding.mask_codes[keys.index(key)]:
                raise PySaveError(f"shift_from names the value to sample {key!r} under; it cannot be masked.")
            source[:, keys.index(key)] = code
        changed = sorted(keys.index(k) for k in shift_from)
        # Refused before the flow runs, not mid-stream: each distinct (source, target) row shifted once.
        rows = D.distinct_rows(np.concatenate([source, codes], axis=1))[0]
        # Checks coverage and records what will be done (the positions given here are placeholders),
        # and solves the transport of the local shifts once for every chunk.
        transport = {}
        _, info = self._shifted(torch.zeros(len(rows), self.params["latent_dim"]), rows[:, :len(keys)], rows[:, len(keys):],
                                changed, float(bandwidth), "generate without shift_from",
                                expression=lambda stats: np.zeros((len(rows), stats["pc_means"].shape[1]), np.float32),
                                neighbours=int(neighbours), transport=transport)
        return {"source": source, "changed": changed, "bandwidth": float(bandwidth), "neighbours": int(neighbours),
                "transport": transport,
                "info": {"shift_from": {k: str(v) for k, v in shift_from.items()}, **info}}

    def _never_seen_note(self, found: list, guidance: float | None) -> dict:
        """Warn when the table asks for combinations no training cell had (``found``, from
        :meth:`_never_seen`) and no ``shift_from`` was given, naming a ``shift_from`` that would
        reach them by way of a seen combination: the flow alone composes such combinations worse
        (Kang, 7 held-out types x 2 seeds, at guidance 1: per-gene-mean r2 0.69 sampled directly
        against 0.84 by way of the control cells; benchmarks/README.md). The default guidance
        (None) already samples them at 1, which scored better on both routes than 1.5 (0.67,
        0.82); a weight given other than 1 is told so. Returns what ``uns["pysave"]`` records of it."""
        if not found:
            return {}
        keys, cats = self.registry["condition_keys"], self.registry["categories"]
        # Per combination asked for, the one-condition change whose shift back is learned from the most strata.
        hints = sorted({(keys[j], cats[keys[j]][c]) for _, ways in found for j, c, _ in ways[:1]})
        forms = [f"{k}={v} (Python shift_from={{{k!r}: {v!r}}}, R shift_from = list({k} = \"{v}\"), CLI --shift-from {k}={v})"
                 for k, v in hints[:2]]
        given = guidance is not None and guidance != NEVER_SEEN_GUIDANCE
        weight = (f" guidance={guidance:g} was given: guidance 1, which the default gives never-seen "
                  "combinations (leave it out: Python guidance=None, R guidance = NULL, CLI without --guidance), "
                  "scored better than 1.5 on both routes (r2 0.69 against 0.67 sampled directly, 0.84 against 0.82 by "
                  "way of a seen combination)." if given else "")
        advice = (" On Kang's held-out combinations, generating by way of a seen combination came closer to the real cells "
                  "(per-gene-mean r2 0.84 against 0.69 sampled directly, at guidance 1; benchmarks/README.md): shift_from "
                  + " or ".join(forms) + "." if forms
                  else " No seen combination differs from them in one condition only, so shift_from cannot reach them.")
        return self._never_seen_warning(found, "combination(s) asked for were", advice + weight)

    def _never_seen(self, codes: np.ndarray) -> list:
        """shift.never_seen on this model's training counts; [] for models saved without them."""
        stats = getattr(self, "condition_latents", None) or {}
        return never_seen(codes, stats, self.vae.condition_embedding.mask_codes) if "counts" in stats else []

    def _never_seen_warning(self, found: list, asked: str, advice: str) -> dict:
        """The warning of generation and transfer for combinations no training cell had (``found``,
        from :meth:`_never_seen`), naming up to 5; returns what the provenance records."""
        keys, cats = self.registry["condition_keys"], self.registry["categories"]
        names = [", ".join(f"{k}={cats[k][int(c)]}" for k, c in zip(keys, row)) for row, _ in found]
        shown = "; ".join(names[:5]) + (f"; and {len(names) - 5} more" if len(names) > 5 else "")
        warn_user(f"{len(names)} {asked} never seen in training ({shown}); the flow composes them from what it learned "
                  f"of each condition alone.{advice}")
        return {"never_seen_combinations": names}

    def _flow_transfer_note(self, codes: np.ndarray, fallback_reason: str | None, caller: str = "transfer") -> dict:
        """Warn when transfer moves cells through the flow into combinations no training cell had:
        the flow composes those worse than the latent shift does (Kang, 7 held-out types, seed 0:
        per-gene-mean r2 0.75 through the flow against 0.87 by the shift, and it fell as the flow
        trained longer; benchmarks/README.md). ``fallback_reason``: why via="auto" could not take
        the shift, or None when via="flow" was asked for. ``caller`` "correct": the advice names
        correct()'s own default route, which has no via="auto". Returns what the provenance records."""
        found = self._never_seen(codes)
        if not found:
            return {}
        if caller == "correct":
            advice = (" correct()'s default route, via='decoder' (R RunSAVE(corrected = TRUE), CLI pysave correct "
                      "--via decoder), decodes each cell's own latent under the reference batch and does not ask the "
                      "flow for a combination it never saw.")
        elif fallback_reason is None:
            advice = (" The default route, via='auto' (R via = \"auto\", CLI --via auto), moves cells by the latent shift "
                      "between the conditions wherever training cells on both sides allow it, which came closer to the "
                      "real cells on Kang's held-out combinations (per-gene-mean r2 0.87 by the shift with "
                      "output='input_plus_change', against 0.75 through the flow as sampled counts; benchmarks/README.md).")
        else:
            advice = f" via='auto' took the flow because {fallback_reason}"
        return self._never_seen_warning(found, "target combination(s) were", advice)

    def _generated_obs(self, codes: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
        obs = self._obs_from_codes(codes, pd.Index([f"gen_{i}" for i in range(len(codes))]))
        for col in table.columns:
            if col not in self.registry["condition_keys"]:
                obs[col] = table[col].to_numpy()
        return obs

    def _generation_provenance(self, guidance: dict, n_steps, solver, seed, output, precision, shift=None,
                               calibration: dict | None = None, torch_compile: bool = False,
                               never_seen: dict | None = None) -> dict:
        """``guidance``: what :meth:`_guidance_plan` records."""
        how = "; latents sampled by the flow" + (
            " under shift_from, then moved by the training cells' latent shift to the cells' conditions" if shift else "")
        if calibration and calibration.get("calibrated"):
            how += "; decoder means of combinations seen in training calibrated to their training cells' mean"
            if calibration.get("spread_calibrated_cells"):
                how += (f" and, for those with >= {SPREAD_MIN_CELLS} kept training cells, widened along the model's expression "
                        "PCs towards their training cells' spread")
        return self._provenance("generated", {"seed": int(seed), **guidance, "n_steps": int(n_steps),
                                              "solver": solver, "output": output, "precision": precision,
                                              **self._count_streams_note(output),
                                              "torch_compile": bool(torch_compile),
                                              "output_description": OUTPUT_DESCRIPTIONS[output] + how,
                                              **(shift["info"] if shift else {}), **(calibration or {}), **(never_seen or {})})

    def generate_like(self, obs_table: pd.DataFrame, guidance: float | None = None, n_steps: int = DEFAULT_STEPS,
                      solver: str = DEFAULT_SOLVER, seed: int = 0, batch_size: int = 4096, output: str | None = None,
                      precision: str = "auto", shift_from: dict | None = None, shift_bandwidth: float = SHIFT_BANDWIDTH,
                      shift_neighbours: int = SHIFT_NEIGHBOURS, calibrate: bool = DEFAULT_CALIBRATE,
                      torch_compile: bool = False):
        """Generate one cell per row of ``obs_table`` (or ``n_cells`` per row if it has that column).

        ``obs_table`` is a DataFrame (e.g. ``held_out.obs``), a dict of columns, or an AnnData,
        whose ``obs`` is used: ``generate_like(held_out)`` gives one generated cell per held-out cell.

        Condition columns that are absent or missing are masked. ``guidance`` is the
        classifier-free guidance weight w (1 = the plain conditional model; larger pushes samples
        towards their conditions). The default, None, weighs each row by its combination: 1.5
        (``DEFAULT_GUIDANCE``) for combinations seen in training and rows with a masked condition,
        closer to real cells than 1 or 2, and 1 (``NEVER_SEEN_GUIDANCE``) for combinations no
        training cell had, which scored better there than 1.5 (Kang, below); a number gives every
        row that weight. Recorded in ``uns["pysave"]``: ``guidance`` (the number, or "auto" with
        ``guidance_seen``, ``guidance_never_seen`` and ``guidance_never_seen_cells``). ``solver`` is
        ``"euler"``, ``"midpoint"`` or ``"rk4"`` (``n_steps`` fixed steps of 1, 2 or 4 network
        passes) or ``"dopri5"`` (adaptive; the last three through torchdiffeq). The default, 10
        midpoint steps, scored like 50 Euler steps in the benchmarks at 2.5x less compute.
        ``output`` is ``"sample"`` (counts drawn around the decoder mean with a library size
        from the training cells of the same conditions, as log1p(CP10k): cells with zeros and
        noise like real ones; the default) or ``"mean"`` (the decoder mean); recorded in
        ``uns["pysave"]["output"]``. ``batch_size``: cells generated at a time, at most (fewer
        above 4,096 genes, ``data.DENSE_BLOCK_VALUES`` values a chunk, so memory stays bounded at
        atlas width). The same seed gives the same cells, whatever ``batch_size`` (but for a rare
        sampled count at many genes, docs/reproducibility.md),
        on the CPU and on a GPU in fp32 (what ``"auto"`` chooses); in bf16 on a GPU the decoder
        rounds by batch size, so about a tenth of the sampled values change with it
        (docs/reproducibility.md).
        ``precision``: ``"32"``, ``"bf16"`` (autocast; 1.3-1.6x faster on CPUs with native bf16,
        scores within seed noise, benchmarks/README.md) or ``"auto"`` (the default: 32 on every
        device, so that cells do not depend on ``batch_size``; training's ``"auto"`` is bf16 on CUDA).

        ``shift_from`` (e.g. ``{"condition": "control"}``) generates a combination by way of
        another: the flow samples latents with these values in place of the table's, each latent
        takes the training cells' latent shift from them to the table's values (as
        ``transfer(via="shift")``, with ``shift_neighbours`` and ``shift_bandwidth``), and is decoded
        under the table's conditions. For a combination never seen in training (stimulated x a
        cell type seen only as control) it scored closer to the held-out real cells than sampling
        the combination directly: Kang, 7 types x 2 seeds, per-gene-mean r2 0.836 against 0.691,
        W1 1.04x against 1.08x the noise floor, at guidance 1, the default's weight for such rows
        (2 seeds of the code of 2026-12-01: 0.809 against 0.704, and 0.721 at guidance 2;
        benchmarks/README.md). At guidance 1.5 both routes score lower on the same models (0.823
        against 0.672). With ``shift_from`` too the default weighs each row
        by its own combination (the table's), not by the one the flow samples under.
        Recorded in ``uns["pysave"]`` (``shift_from``, ``shift_strata``, ``shift_neighbours``, ``shift_bandwidth``).
        Without ``shift_from``, asking for combinations no training cell had warns (a
        ``PySaveWarning`` that names a ``shift_from`` able to reach them: the one-condition change
        whose shift is learned from the most strata), and ``uns["pysave"]["never_seen_combinations"]``
        lists them.

        ``calibrate`` (default True): cells of a combination seen in training (with at least
        ``MIN_CALIBRATION_CELLS`` cells) have their decoder mean moved by that combination's
        offset, kept at training: its training cells' mean log1p(CP10k) minus the decoder mean of
        their own latents (pysave.calibration). The decoder alone misplaces the combinations'
        centres; calibrated, the generated cells came to 1.028x the noise floor's W1 against
        1.067x on pbmc_3tech and 1.032x against 1.055x on Baron (4 seeds each;
        benchmarks/README.md, "Combination calibration"). Combinations
        never seen, or with a masked condition, are generated as before. Recorded in
        ``uns["pysave"]`` (``calibrated``, ``calibrated_cells``). Models saved before calibration
        existed, and negative binomial models, generate without it (and say so).
        Calibration also widens each such combination (with at least ``SPREAD_MIN_CELLS`` kept
        training cells) towards its training cells' spread: the decoder gives a combination about
        two-thirds to three-quarters of its real within-combination variance. One pilot draw of
        ``SPREAD_PILOT_CELLS`` cells per combination, at the call's sampler settings and a fixed
        seed, gives per-PC factors (in the model's 30 expression PCs, between 1 and
        ``SPREAD_MAX_FACTOR``) that widen the decoder means around the pilot's mean, so the cells
        do not depend on the seed, chunk or other rows of the call. In the benchmarks (4 seeds
        each) MMD came from 0.010 above the per-group Gaussian's to under it on Baron (-0.0017)
        and to 0.0007 above it on pbmc_3tech, and under it on scVelo pancreas (-0.0065, from
        +0.0018), at W1 1.041x / 1.042x / 1.069x the noise floor against 1.014x / 1.024x / 1.059x
        (benchmarks/README.md, "Spread calibration in the product").
        A pilot costs ``SPREAD_PILOT_CELLS`` cells of sampling per combination, once per model
        and sampler settings: ``train()`` draws those of the default settings (guidance, steps,
        solver, precision) for up to ``SPREAD_TRAINED_PILOTS`` combinations, the ones with the most
        kept cells, and the model directory keeps every pilot drawn before it is saved, so a call
        at the defaults draws none. At other settings, a first call for a few cells of many
        combinations is several times slower (``pysave info`` lists the kept pilots). Not with
        ``shift_from``. Recorded in ``uns["pysave"]`` (``spread_calibrated_cells``, or
        ``spread_skipped``, why not).

        ``torch_compile=True`` compiles the flow's Transformer with ``torch.compile`` for this
        call: on a 2-core Intel Xeon (1 thread) it sampled 1.3x as fast at the defaults (fp32,
        midpoint 10, w = 2, sampled counts) and 1.29-1.36x at 50 Euler steps in bf16, after a
        compilation of ~20 s (less once torch's on-disk cache holds it; benchmarks/README.md, "A
        third kind of machine"), so it pays from tens of thousands of cells. Cells differ from the
        uncompiled ones by rounding only; the same seed gives the same cells again. Needs a C++
        compiler on the CPU. Recorded in ``uns["pysave"]["torch_compile"]``.
        """
        import anndata as ad

        request = self._generation_request(obs_table, guidance, n_steps, solver, seed, batch_size, output, precision,
                                           shift_from, shift_bandwidth, shift_neighbours, calibrate, torch_compile)
        X, Z = self._collected(request["chunks"], len(request["codes"]))
        out = ad.AnnData(X=X, obs=request["obs"], var=pd.DataFrame(index=pd.Index(self.genes)))
        out.uns["pysave"] = request["provenance"]
        out.obsm["X_save"] = Z
        return out

    def generate_to_h5ad(self, path: str, obs_table: pd.DataFrame, guidance: float | None = None,
                         n_steps: int = DEFAULT_STEPS, solver: str = DEFAULT_SOLVER, seed: int = 0, batch_size: int = 4096, overwrite: bool = False,
                         extra_uns: dict | None = None, output: str | None = None, precision: str = "auto",
                         shift_from: dict | None = None, shift_bandwidth: float = SHIFT_BANDWIDTH,
                         shift_neighbours: int = SHIFT_NEIGHBOURS, calibrate: bool = DEFAULT_CALIBRATE,
                         torch_compile: bool = False) -> str:
        """Like :meth:`generate_like`, but cells go to ``path`` chunk by chunk: memory stays
        at one chunk whatever the number of cells. The file equals the in-memory result."""
        request = self._generation_request(obs_table, guidance, n_steps, solver, seed, batch_size, output, precision,
                                           shift_from, shift_bandwidth, shift_neighbours, calibrate, torch_compile)
        n_cells = len(request["codes"])

        def report(done: int) -> None:
            if self.verbose and n_cells > batch_size:
                self._log(f"generated {done}/{n_cells} cells")
        return self._streamed(path, request["chunks"], request["obs"], {"pysave": {**request["provenance"], **(extra_uns or {})}},
                              report, overwrite=overwrite)

    def _generation_request(self, obs_table, guidance, n_steps, solver, seed, batch_size, output, precision, shift_from,
                            shift_bandwidth, shift_neighbours, calibrate, torch_compile) -> dict:
        """What generate_like and generate_to_h5ad share: every argument checked and every plan
        made before the first cell (so a bad one is refused before any file is begun), the chunks
        still to be generated (a generator), their obs and the provenance for uns["pysave"]."""
        output = self._check_output(output)
        precision = self._precision(precision)
        guidance = check_guidance(guidance, auto=True)
        table, codes = self._generation_plan(obs_table, guidance, n_steps, solver)
        calibration, calibrated = self._calibration_plan(calibrate, codes)
        shift = self._shift_plan(codes, shift_from, shift_bandwidth, shift_neighbours)
        found = self._never_seen(codes)
        # Rows are weighed by their own (target) combination, also when the flow samples under shift_from's.
        weights, guidance_info = self._guidance_plan(guidance, codes, found)
        never_seen_info = self._never_seen_note(found, guidance) if shift is None else {}
        torch_compile = check_torch_compile(torch_compile, self.device)
        # Last: the pilot draws are the one costly step, so every refusal above comes first.
        calibrated.update(self._spread_plan(calibration, codes, weights, n_steps, solver, precision, shift))
        return {"codes": codes, "obs": self._generated_obs(codes, table),
                "chunks": self._generated_chunks(codes, weights, n_steps, solver, seed, batch_size, output, precision, shift,
                                                 calibration, torch_compile),
                "provenance": self._generation_provenance(guidance_info, n_steps, solver, seed, output, precision, shift,
                                                          calibrated, torch_compile, never_seen_info)}

    def _collected(self, chunks, n_cells: int):
        """(X, latents) of ``n_cells`` cells from (start, X rows, latent rows) chunks, in memory."""
        X = np.empty((n_cells, len(self.genes)), dtype=np.float32)
        Z = np.empty((n_cells, self.params["latent_dim"]), dtype=np.float32)
        for start, x, z in chunks:
            X[start:start + len(x)], Z[start:start + len(z)] = x, z
        return X, Z

    def _streamed(self, path: str, chunks, obs: pd.DataFrame, uns: dict, report, overwrite: bool = False,
                  inputs: tuple = ()) -> str:
        """Write (start, X rows, latent rows) chunks to the .h5ad ``path`` as they come (latents
        in obsm["X_save"]), calling ``report(cells done)`` after each; returns the path."""
        with io.H5adStream(path, len(obs), self.genes, {"X_save": self.params["latent_dim"]}, overwrite=overwrite,
                           inputs=inputs) as out:
            for start, x, z in chunks:
                out.write_rows(start, x, {"X_save": z})
                report(start + len(x))
            return out.finish(obs, uns)

    def transfer(self, adata, target: dict, batch_size: int = 1024, output: str = "mean", seed: int = 0,
                 via: str = DEFAULT_TRANSFER_VIA, guidance: float = 2.0, n_steps: int = 50, precision: str = "auto",
                 shift_bandwidth: float = SHIFT_BANDWIDTH, shift_neighbours: int = SHIFT_NEIGHBOURS):
        """Encode cells under their own conditions and decode them under ``target``.

        Perturbation prediction (``{"condition": "stimulated"}``) and batch transfer
        (``{"batch": "ref"}``, or ``None`` / "[MASK]" to remove the batch).

        Parameters
        ----------
        adata
            Cells with the model's genes and condition columns (raw counts); ``None``: the
            training cells.
        target
            ``{condition key: value}`` to decode under; the other conditions stay the cells' own.
        output
            What X holds, log-normalized: ``"mean"`` (the default), the decoder mean, the best
            estimate of each cell's expression under the target; ``"sample"``, counts sampled
            around it (library size drawn for the target conditions; ``seed`` seeds it); or
            ``"input_plus_change"``, each cell's own log1p(CP10k) plus the change the model
            predicts for it (decoder mean under the target minus decoder mean of its encoder mean
            under its own conditions), clipped at 0. With it the VAE's reconstruction error
            cancels and each cell keeps its measured noise, so per-gene means follow real cells
            more closely; it also keeps the input's batch effects, so it is no way to correct
            batches (scIB Total 0.571 against 0.721 on pbmc_3tech).
        via
            How the latent moves. ``"auto"`` (the default): ``"shift"`` where it can be used,
            else ``"flow"`` (a masked target, no training cells of both values under the same
            other conditions, or a model saved before the shift's statistics existed); the path
            taken and why are in ``uns["pysave"]`` (``via``, ``via_reason``). ``"shift"``: the
            encoder mean plus the training cells' latent shift between the conditions (scGen's
            latent arithmetic in SAVE's latent, see Notes); it needs a target value (not a mask)
            and training cells of both values under the same other conditions. ``"flow"``: back
            through the flow to noise under the cell's conditions, forward under the target ones
            (``guidance`` w, ``n_steps`` Euler steps each way). ``"decoder"``: the encoder mean
            stays, only the decoder's conditions change (~200x less compute; what :meth:`correct`
            uses).
        shift_neighbours
            ``via="shift"``: a cell takes the mean optimal-transport displacement of this many
            nearest kept training cells (default ``SHIFT_NEIGHBOURS``); 0 weighs the strata's mean
            shifts with a kernel instead.
        shift_bandwidth
            ``via="shift"`` with ``shift_neighbours=0``: the kernel's width in units of the median
            squared distance between the strata's source means; ``float("inf")`` weighs the strata
            equally, as scGen does.
        guidance, n_steps
            ``via="flow"`` (and ``"auto"`` when it takes the flow) only.
        batch_size, precision
            Cells per forward pass; precision of the flow and the decoder, as in
            :meth:`generate_like`.

        Returns
        -------
        AnnData
            X as chosen by ``output``; ``obs`` with the target values and the original ones in
            ``obs[f"{key}_source"]``; ``obsm["X_save"]`` the moved latent; ``uns["pysave"]`` what
            ran (``via``, the path taken; with ``via="auto"`` also ``via_requested`` and
            ``via_reason``; for the shift ``shift_strata``, ``shift_weighed_in`` and
            ``shift_neighbours``: 0 when the kernel was used; through the flow,
            ``never_seen_combinations``: the target combinations no training cell had, which
            also give a ``PySaveWarning``: the flow composes them worse than the shift does,
            and worse the longer it trains, Kang seed 0: per-gene-mean r2 0.797 at 4,000 flow
            steps, 0.748 at 8,000, against 0.870 by the shift, ``output="input_plus_change"``).

        Notes
        -----
        The shift (``latent_shifts``): a stratum is one value of each other condition with at
        least ``MIN_SHIFT_CELLS`` training cells on both sides. By default each stratum's kept
        training cells (``SHIFT_KEPT_CELLS`` per combination, saved with the model) are matched
        source to target by exact optimal transport in the latent, and a cell takes the mean
        displacement of its ``shift_neighbours`` nearest kept source cells, found in the training
        cells' first 30 principal components of log1p(CP10k). With ``shift_neighbours=0``, and for
        model directories saved before 2026-12-01, a cell takes the strata's mean shifts (mean
        latent(target) - mean latent(source)) weighed by a Gaussian kernel on its distance to
        each stratum's source cells (older directories measure it in the latent).

        Measured (benchmarks/README.md): on Kang with each cell type's stimulated cells held out
        (masking 0.6, 7 types x 4 seeds, ``input_plus_change``) the local shift gives R^2 of
        per-gene means 0.906 on the top-100 DEGs and 0.906 on all genes, the kernel 0.900 /
        0.903; on muscat's Kang set 0.901 / 0.943 against 0.881 / 0.936. The flow carries only
        about half of the stimulation effect into a cell type whose stimulated cells it never
        saw (0.836 / 0.861 against the shift's 0.872 / 0.895 on the same models, 2 seeds); the
        decoder alone less (about 0.64 on the DEGs). Moving cells to another batch with the
        cell type kept (pbmc_3tech, Baron, CellBench, 2 seeds), the shift was ahead of the flow
        on the per-gene means and on W1 and MMD to the real cells of the target batch (e.g.
        CellBench, top-100 DEGs 0.940 against 0.884): hence ``via="auto"``.
        """
        return self._transferred(self._transfer_plan(adata, target, batch_size, output, seed, via, guidance, n_steps,
                                                     precision, shift_bandwidth, shift_neighbours))

    def _transferred(self, plan: dict):
        """The AnnData of a :meth:`_transfer_plan`, decoded in memory (transfer, correct)."""
        X, Z = self._collected(self._transferred_chunks(plan), len(plan["codes"]))
        plan["progress"]("decoded under the target")
        out = self._output(X, plan["obs"], "transferred", plan["provenance"])
        out.obsm["X_save"] = Z
        return out

    def transfer_to_h5ad(self, path: str, adata, target: dict, overwrite: bool = False, inputs: tuple = (),
                         extra_uns: dict | None = None, **kwargs) -> str:
        """Like :meth:`transfer`, but the cells go to ``path`` chunk by chunk, so memory holds
        one chunk of genes x cells, not the whole output (the latents, d values per cell, are
        kept). With a backed AnnData (``anndata.read_h5ad(path, backed="r")``) the input is
        read chunk by chunk too. The file equals the in-memory result."""
        plan = self._transfer_plan(adata, target, **kwargs)
        uns = {"pysave": {**self._provenance("transferred", plan["provenance"]), **(extra_uns or {})}}

        def report(done: int) -> None:  # silent for a call of one batch, as each stage of transfer()
            plan["progress"](f"decoded {done}/{len(plan['codes'])} cells under the target")
        return self._streamed(path, self._transferred_chunks(plan), plan["obs"], uns, report, overwrite=overwrite,
                              inputs=inputs)

    def _transfer_plan(self, adata, target: dict, batch_size: int = 1024, output: str = "mean", seed: int = 0,
                       via: str = DEFAULT_TRANSFER_VIA, guidance: float = 2.0, n_steps: int = 50, precision: str = "auto",
                       shift_bandwidth: float = SHIFT_BANDWIDTH, shift_neighbours: int = SHIFT_NEIGHBOURS,
                       caller: str = "transfer") -> dict:
        """transfer()'s checks and everything of the size of the latent: the cells' encoder means,
        moved (shift, flow) into ``z``, the target codes, obs and provenance. The genes x cells
        output is left to :meth:`_transferred_chunks`. ``caller``: whose advice the flow's
        never-seen warning gives (:meth:`_flow_transfer_note`)."""
        self._require_trained()
        if output is not None and output not in TRANSFER_OUTPUTS:
            raise PySaveError(f"transfer's output must be one of {list(TRANSFER_OUTPUTS)}, got {output!r}.")
        plus_change = output == INPUT_PLUS_CHANGE
        output = output if plus_change else self._check_output(output)
        precision = self._precision(precision)
        if via not in TRANSFER_VIAS:
            raise PySaveError(f"via must be one of {list(TRANSFER_VIAS)}, got {via!r}.")
        # n_steps is checked for either path (as before); guidance only matters for the flow, but
        # must be a number whatever the path. "auto" checks it against the model only if it takes
        # the flow (its warning is about the flow).
        guidance = check_guidance(guidance)
        self._check_flow_options(guidance if via == "flow" else 1.0, n_steps)
        if via in ("shift", "auto"):
            check_shift_bandwidth(shift_bandwidth)
            check_shift_neighbours(shift_neighbours)
        if not target:
            raise PySaveError("no target conditions given; e.g. target={'condition': 'stimulated'}.")
        target_codes = {k: self._code_of(k, v) for k, v in target.items()}
        adata = self.adata if adata is None else adata  # None: the training cells, as get_latent_representation
        prep = self._prepare(adata, keep_counts=plus_change)
        progress = self._stages("transfer", prep.n_cells, batch_size)
        mu, _ = self._encode(prep, batch_size=batch_size)
        progress(f"encoded {prep.n_cells} cells")
        codes = prep.codes.copy()
        keys = self.registry["condition_keys"]
        for key, code in target_codes.items():
            codes[:, keys.index(key)] = code
        z = mu
        shift_info = {}
        if via in ("shift", "auto"):
            requested = via
            try:
                z, shift_info = self._shifted(mu, prep.codes, codes, [keys.index(k) for k in target_codes],
                                              float(shift_bandwidth), "use via='flow'",
                                              # placed by the input cells' own expression
                                              expression=lambda stats: source_positions(stats, prep, self.scalers, batch_size),
                                              neighbours=int(shift_neighbours))
                via = "shift"
            except PySaveError as err:
                if requested == "shift":
                    raise
                # "auto": what the shift cannot do (a masked target, no training cells behind a
                # value, a model saved without the shift's statistics) goes through the flow.
                via = "flow"
                self._check_flow_options(guidance, n_steps)
                shift_info = {"via_requested": "auto", "via_reason": f"the latent shift could not be used: {err}"}
                progress("via='auto': through the flow (the latent shift could not be used)")
            else:
                if requested == "auto":
                    reason = "the target names values with training cells on both sides"
                    if len(keys) == len(target_codes):
                        # Measured (benchmarks/try_batch_transfer.py, BATCH_ONLY=1): with nothing to
                        # stratify by, cells can be moved towards other cell types where batches differ
                        # in composition (Baron DEGs R^2 0.749 against 0.858 with the cell type given; 2 seeds).
                        reason += ("; one stratum (the model has no other condition), so each source value's cells are "
                                   "matched as a whole: where they differ in cell-type composition, train with the "
                                   "cell type as a condition too")
                    shift_info = {**shift_info, "via_requested": "auto", "via_reason": reason}
                progress(f"shifted by {'local' if shift_info.get('shift_neighbours') else 'stratum-mean'} latent shifts")
        if via == "flow":
            # Here via_reason, if any, is why "auto" fell back to the flow.
            shift_info = {**shift_info, **self._flow_transfer_note(codes, shift_info.get("via_reason"), caller)}
            self.flow.eval()
            parts = []
            for start in range(0, len(mu), batch_size):
                sl = slice(start, start + batch_size)
                x = ((mu[sl] - self.latent_mean) / self.latent_std).to(self.device)
                with autocast(self.device, precision):
                    moved = transport_latents(self.flow, x, torch.from_numpy(prep.codes[sl]).to(self.device),
                                              torch.from_numpy(codes[sl]).to(self.device), float(guidance), int(n_steps))
                parts.append(moved.float().cpu() * self.latent_std + self.latent_mean)
            z = torch.cat(parts)
            progress("moved through the flow")
        obs = adata.obs.copy()
        new = self._obs_from_codes(codes, obs.index)
        for key in target:
            if key in obs.columns:
                obs[f"{key}_source"] = obs[key]
            obs[key] = new[key]
        via_info = {"via": via, "precision": precision, **shift_info,
                    **({"guidance": float(guidance), "n_steps": int(n_steps)} if via == "flow" else {})}
        provenance = {"target": {k: str(v) for k, v in target.items()}, "output": output,
                      "output_description": OUTPUT_DESCRIPTIONS[output] + (
                          "; decoded from the encoder mean" if via == "decoder" else
                          "; decoded from the encoder mean shifted by the training cells' "
                          "latent shift between the conditions" if via == "shift" else
                          "; decoded from the encoder mean moved through the flow"), **via_info,
                      **({"seed": int(seed)} if output == "sample" else {}), **self._count_streams_note(output)}
        return {"prep": prep, "mu": mu, "z": z, "codes": codes, "obs": obs, "output": output, "seed": seed,
                "precision": precision, "progress": progress, "provenance": provenance}

    def _transferred_chunks(self, plan: dict):
        """(start, X rows, latent rows) of the transferred cells, decoded and made into the requested
        output chunk by chunk; sampling consumes its streams cell by cell, so the chunks do not change it."""
        prep, z, codes, precision = plan["prep"], plan["z"], plan["codes"], plan["precision"]
        plus_change = plan["output"] == INPUT_PLUS_CHANGE
        sampler = None if plus_change else self._output_sampler(plan["output"], plan["seed"])
        chunk = self._chunk_rows(loader.DEFAULT_CHUNK_SIZE)
        for start in range(0, len(codes), chunk):
            stop = min(start + chunk, len(codes))
            x = self._decode(z[start:stop], codes[start:stop], precision=precision)
            if plus_change:
                x = self._input_plus_change(x, plan["mu"], prep, precision, start, stop)
            else:
                x = sampler(x, codes[start:stop])
            yield start, x, z[start:stop].numpy()

    def _input_plus_change(self, decoded: np.ndarray, mu: torch.Tensor, prep, precision: str, start: int, stop: int) -> np.ndarray:
        """transfer's "input_plus_change" for cells start..stop: each cell's own log1p(CP10k) (from
        the counts ``prep`` kept) plus ``decoded`` (their rows) minus the decoder mean of ``mu`` under
        the cell's own conditions, clipped at 0. Works in place on ``decoded``."""
        decoded -= self._decode(mu[start:stop], prep.codes[start:stop], precision=precision)
        _, counts = prep.read(start, stop)
        library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        decoded += D.log_normalize(counts, library).toarray()
        np.maximum(decoded, 0.0, out=decoded)
        return decoded

    def _shifted(self, mu: torch.Tensor, source: np.ndarray, target: np.ndarray, changed: list[int], bandwidth: float,
                 instead: str, expression=None, neighbours: int = 0, transport: dict | None = None):
        """transfer(via="shift") and generation with ``shift_from``: latents plus the training
        cells' latent shift from each cell's conditions to the target's (``latent_shifts``),
        and what was averaged. ``expression`` (a function of the model's stats giving the cells'
        positions in the expression PCs, ``expression_positions``) places the cells for the
        weights; without it, or for models saved before the expression PCs existed, they are
        weighed in the latent. ``neighbours`` > 0 takes local shifts (``latent_shifts``) where the
        model kept training cells for them (models saved from 2026-12-01 on), else the kernel over
        stratum means (``transport``: as in ``latent_shifts``). ``instead`` names the way out when no
        stratum covers a pair."""
        stats = getattr(self, "condition_latents", None)
        if stats is None:
            raise PySaveError("this model directory has no per-condition latent means (saved by an older pysave), which "
                              f"the latent shift needs; retrain the model, or {instead}.")
        keys = self.registry["condition_keys"]
        masks = [keys[j] for j in changed if (target[:, j] == self.vae.condition_embedding.mask_codes[j]).any()]
        if masks:
            raise PySaveError(f"the latent shift moves cells to a given value, but {masks} would be masked; name a "
                              f"value, or {instead}.")
        in_expression = expression is not None and "pc_means" in stats
        positions = expression(stats) if in_expression else None
        local = int(neighbours) if in_expression and "cell_latents" in stats else 0
        shifts, pairs = latent_shifts(stats, mu.numpy(), source, target, changed, bandwidth=bandwidth, positions=positions,
                                      neighbours=local, transport=transport)

        def names(values):
            return ", ".join(f"{keys[j]}={self._name_of(keys[j], v)}" for j, v in zip(changed, values))

        missing = [(names(src), names(tgt)) for src, tgt, n in pairs if n is None]
        if missing:
            others = [k for j, k in enumerate(keys) if j not in changed]
            raise PySaveError(
                f"the latent shift needs training cells of both the source and the target conditions under the same "
                f"{others or 'other conditions'} (at least {MIN_SHIFT_CELLS} of each); none for {missing[0][0]} -> "
                f"{missing[0][1]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + f"; {instead}.")
        # "source -> target": the number of strata averaged (a dict of ints, so that h5ad can store it)
        info = {"shift_strata": {f"{names(src)} -> {names(tgt)}": int(n) for src, tgt, n in pairs if n},
                "shift_min_cells": MIN_SHIFT_CELLS, "shift_bandwidth": bandwidth, "shift_neighbours": local,
                "shift_weighed_in": f"{stats['pc_means'].shape[1]} expression PCs" if in_expression else "latent"}
        return mu + torch.from_numpy(shifts), info

    def get_latent_representation(self, adata=None, key_added: str | None = "X_save", batch_size: int = 1024) -> np.ndarray:
        """Encoder means (the latent used for integration); also written to ``obsm[key_added]``."""
        self._require_trained()
        adata = self.adata if adata is None else adata
        mu, _ = self._encode(self._prepare(adata), batch_size=batch_size)
        latent = mu.numpy()
        if key_added and adata is not None:
            adata.obsm[key_added] = latent
        return latent

    def correct(self, adata=None, batch_key: str | None = None, reference: str | list | None = None,
                layer_added: str | None = "save_corrected", batch_size: int = 1024, via: str = DEFAULT_CORRECT_VIA,
                latent_key_added: str | None = "X_save_corrected", n_steps: int = 50,
                normalize_total: bool = DEFAULT_CORRECT_NORMALIZE_TOTAL) -> np.ndarray:
        """Batch-corrected log-normalized expression, with the batch masked (default) or set to
        ``reference``; written to ``layers[layer_added]`` and returned.

        ``normalize_total`` (default True): each corrected cell is put back on the input's scale,
        log1p(CP10k): its expm1 profile is rescaled to sum to 1e4 over the model's genes, as the
        input was normalized (scanpy's ``normalize_total`` then ``log1p``). The decoder's mean is
        E[log1p] per gene, whose profile sums to anything; False returns it as it is.

        ``reference`` may also be a list of batches, or ``"all"`` for every batch the model
        knows: each cell is then decoded under each of them and the log-normalized expressions
        are averaged (scVI's ``transform_batch`` list). It costs one decoder pass per batch and
        goes via the decoder only. On models trained with ``kl_weight=0.5`` (4 seeds) it scored
        0.003 scIB Total above the masked batch on pbmc_3tech, 0.009 below on CellBench and 0.003
        above on Baron (benchmarks/README.md), so the masked batch stays the default. A model
        trained with ``vae_mask_prob=0`` never decoded a masked batch, so for it the default
        (``None``) means ``"all"`` on the decoder path; ``reference="[MASK]"`` still forces the
        mask (and warns).

        ``via="decoder"`` decodes each cell's encoder mean under the new batch: the latent stays.
        ``via="flow"`` first moves the latent through the flow, back to noise under the cell's
        batch and forwards with the batch masked (or set), ``n_steps`` Euler steps each way and
        no guidance, so each batch's latent distribution is carried onto the batch-free one. The
        moved latent is a batch-corrected embedding and goes to ``obsm[latent_key_added]``. It
        costs 2 x ``n_steps`` flow passes per cell. It mixes batches much better, but it carries
        each batch's *whole* latent distribution onto the batch-free one: when batches differ in
        cell-type composition and the model is not conditioned on cell type, it mixes cell types
        too (scIB, benchmarks/README.md: pbmc_3tech Total 0.65 -> 0.72; CellBench, whose batches
        hold different cell lines, Bio 0.90 -> 0.63). Condition the model on the cell type when
        labels exist, or keep the decoder path (the default). Through the flow towards a
        ``reference`` batch that some of the cells' combinations never had in training, a
        ``PySaveWarning`` names those combinations: the flow composes them from each condition alone.

        For integration, train a model with ``kl_weight=0.5``: the decoder path with the batch
        masked then scored scIB Total 0.734 / 0.848 / 0.729 on pbmc_3tech / CellBench / Baron (4
        seeds, ``normalize_total``), ahead of the best of Harmony and Scanorama by 0.031 / 0.025 /
        0.020; the default 0.05 scored 0.07-0.09 lower (with the harness's earlier scoring). When
        the batches hold the same cell populations, ``vae_mask_prob=0`` as well (this method then
        averages over the batches) scored 0.759 on pbmc_3tech (0.728 on Baron over 10 seeds, level
        with the default), but 0.826 on CellBench, whose batches hold different cell lines. The
        default is kept because it generates better cells and transfers perturbations better
        (benchmarks/README.md).
        """
        self._require_trained()
        if via not in CORRECT_VIAS:
            raise PySaveError(f"correct() goes via one of {list(CORRECT_VIAS)}, got {via!r}.")
        key = batch_key or self.registry.get("batch_key")
        if key is None:
            raise PySaveError("no batch key: register one with setup_anndata(..., batch_key=) or pass batch_key=.")
        adata = self.adata if adata is None else adata
        if reference is None and via == "decoder" and float(self.params["vae_mask_prob"]) == 0:
            # This VAE never decoded a masked batch, so its batch-free output is the mean over batches.
            reference = "all"
            self._log("the VAE was trained with vae_mask_prob=0, so the batch cannot be masked: decoding every cell "
                      "under each batch and averaging (reference='all')")
        references = self._correction_references(key, reference)
        if len(references) == 1:
            # guidance 1: the batch-masked field itself (w != 1 would push the other conditions too).
            # The plan itself, not transfer(): its never-seen warning then gives correct()'s own advice.
            out = self._transferred(self._transfer_plan(adata, {key: references[0]}, batch_size=batch_size, via=via,
                                                        guidance=1.0, n_steps=n_steps, caller="correct"))
            X = out.X
        elif via != "decoder":
            raise PySaveError(f"averaging over several reference batches goes via the decoder (the flow moves each cell to "
                              f"one batch); pass via='decoder', or one reference with via={via!r}.")
        else:
            X = self._decoded_over_batches(adata, key, references, batch_size)
        if normalize_total:
            D.normalize_log_profiles(X)
        if adata is not None:
            if layer_added:
                adata.layers[layer_added] = X
            if via == "flow" and latent_key_added:
                adata.obsm[latent_key_added] = out.obsm["X_save"]
        return X

    def _correction_references(self, key: str, reference) -> list:
        """correct()'s ``reference`` as a list of batch values: [None] (masked), one, or several."""
        self._code_of(key, None)  # raises when key is not a condition of this model
        cats = self.registry["categories"][key]
        if reference is None or isinstance(reference, str):
            if reference == "all":
                if "all" in cats:
                    raise PySaveError(f"'all' is both a batch of {key!r} and the word for every batch; pass "
                                      "reference=['all'] for that batch alone, or the list of batches to average over.")
                return list(cats)
            return [reference]
        references = [str(r) for r in reference]
        if not references:
            raise PySaveError("reference is an empty list; name at least one batch, or 'all'.")
        repeated = sorted({r for r in references if references.count(r) > 1})
        if repeated:
            raise PySaveError(f"reference names {repeated} more than once; name each batch once (the mean weighs them equally).")
        masked = [r for r in references if r == D.MASK]
        if masked and len(references) > 1:
            raise PySaveError(f"{D.MASK} cannot be averaged with batches; pass reference=None for the batch masked.")
        return references  # unknown batches: _code_of names the known ones (transfer, _decoded_over_batches)

    def _decoded_over_batches(self, adata, key: str, references: list, batch_size: int) -> np.ndarray:
        """Mean over ``references`` of each cell's encoder mean decoded under that batch
        (log-normalized); encoded once, averaged chunk by chunk so that memory stays that of the output."""
        reference_codes = [self._code_of(key, r) for r in references]  # checked before any encoding
        prep = self._prepare(adata)
        progress = self._stages("correct", prep.n_cells, batch_size)
        mu, _ = self._encode(prep, batch_size=batch_size)
        progress(f"encoded {prep.n_cells} cells")
        column = self.registry["condition_keys"].index(key)
        precision = self._precision("auto")  # as transfer() decodes one reference
        out = np.empty((mu.shape[0], len(self.genes)), dtype=np.float32)
        for start in range(0, mu.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            total = np.zeros((mu[sl].shape[0], len(self.genes)), dtype=np.float64)
            for code in reference_codes:
                codes = prep.codes[sl].copy()
                codes[:, column] = code
                total += self._decode(mu[sl], codes, precision=precision)
            out[sl] = total / len(reference_codes)
        progress(f"decoded under {len(reference_codes)} batches and averaged")
        return out

    def attention_by(self, adata=None, key: str | None = None, batch_size: int = 512) -> pd.DataFrame:
        """Mean encoder attention each gene block receives, per category of ``obs[key]``
        (last encoder layer, averaged over heads and query blocks; paper appendix C)."""
        self._require_trained()
        adata = self.adata if adata is None else adata
        if adata is None:
            raise PySaveError("attention_by needs an AnnData.")
        if key is None or key not in adata.obs.columns:
            raise PySaveError(f"key {key!r} is not a column of adata.obs; choose one of {list(adata.obs.columns)}.")
        prep = self._prepare(adata)
        _, _, attn = self._encode(prep, batch_size=batch_size, attention=True)
        frame = pd.DataFrame(attn.numpy(), columns=[f"block_{b}" for b in range(attn.shape[1])])
        frame[key] = adata.obs[key].astype(str).to_numpy()
        return frame.groupby(key, sort=True).mean()

    def gene_blocks(self) -> pd.DataFrame:
        """Block membership as a table: gene, block, position, placed_by."""
        return self.blocks.table(self.genes)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str, overwrite: bool = False) -> str:
        """Write the model directory: config.json + weights.safetensors (no pickle).

        Under torchrun only rank 0 writes; the other ranks hold the same weights and return.
        """
        if not dist_utils.is_main_process():
            return os.fspath(path)
        tensors = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
        tensors.update({f"flow.{k}": v for k, v in self.flow.state_dict().items()})
        tensors["extra.block_index"] = torch.as_tensor(self.blocks.index)
        tensors["extra.scalers"] = torch.as_tensor(self.scalers.values)
        tensors["extra.latent_mean"] = self.latent_mean
        tensors["extra.latent_std"] = self.latent_std
        if getattr(self, "condition_latents", None) is not None:
            tensors.update({f"extra.condition_latent_{k}": torch.as_tensor(v) for k, v in self.condition_latents.items()})
        # The spread calibration's kept pilots: their keys in config.json, their numbers as tensors.
        pilots = sorted(self._spread_pilots.items())
        if pilots:
            tensors["extra.spread_centre_scores"] = torch.as_tensor(np.stack([v[0] for _, v in pilots]))
            tensors["extra.spread_factors"] = torch.as_tensor(np.stack([v[1] for _, v in pilots]))
        from importlib.metadata import version

        config = {
            "format_version": io.MODEL_FORMAT_VERSION,
            "pysave_version": __version__,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                         "anndata": version("anndata"), "pot": version("pot")},
            "params": self.params,
            "registry": self.registry,
            "genes": self.genes,
            "blocks": {"method": self.blocks.method, "placed_by": self.blocks.source.tolist(),
                       "n_blocks": self.blocks.n_blocks, "block_size": self.blocks.block_size},
            "is_trained": self.is_trained,
            "training": self.training_summary,
            "history": self.history,
            "library_stats": self.library_stats,
            "spread_pilots": [dict(zip(SPREAD_PILOT_KEY, key)) for key, _ in pilots],
        }
        return io.save_model_dir(path, config, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str, adata=None, device: str = "auto", verbose: bool = True) -> "SAVE":
        """Load a model directory (on any device, whatever it was saved from).

        With ``adata``, that AnnData becomes the default data of the task methods; its genes
        are matched to the model's by name.
        """
        config, tensors = io.load_model_dir(path)
        self = cls.__new__(cls)
        try:
            self.params = {**DEFAULTS, **PARAMS_BEFORE_THEY_EXISTED, **config["params"]}
            self.registry = config["registry"]
            self.genes = list(config["genes"])
            blocks = config["blocks"]
            self.blocks = GeneBlocks(tensors["extra.block_index"].numpy().astype(np.int64),
                                     np.asarray(blocks["placed_by"], dtype=str), blocks["method"])
            self.scalers = D.Scalers(tensors["extra.scalers"].numpy())
            self.library_stats = config.get("library_stats")  # None in model directories saved before it existed
            self.latent_mean = tensors["extra.latent_mean"]
            self.latent_std = tensors["extra.latent_std"]
            # None in model directories saved before they existed (transfer(via="shift") needs them)
            # (the pc_* entries, for weighing strata in expression, only since 2026-12-01)
            self.condition_latents = ({k[len("extra.condition_latent_"):]: v.numpy() for k, v in tensors.items()
                                       if k.startswith("extra.condition_latent_")}
                                      if "extra.condition_latent_means" in tensors else None)
            pilots = config.get("spread_pilots", [])  # none in model directories saved before 2026-12-06
            scores, factors = (tensors.get(f"extra.spread_{k}", torch.zeros(0)) for k in ("centre_scores", "factors"))
            self._spread_pilots = {tuple(p[k] for k in SPREAD_PILOT_KEY): (s.numpy(), f.numpy()) for p, s, f in zip(pilots, scores, factors)}
            if not len(self._spread_pilots) == len(pilots) == len(scores) == len(factors):
                raise ValueError(f"config.json lists {len(pilots)} distinct spread pilots, the weights hold {len(scores)}")
            self.history = config.get("history", {})
            self.training_summary = config.get("training", {})
            self.is_trained = bool(config.get("is_trained", False))
            self.verbose = verbose
            self._data = None
            self.adata = None
            self._build_networks()
            self.vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")})
            self.flow.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("flow.")})
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise ModelDirectoryError(f"model directory {path!r} is inconsistent ({type(err).__name__}: {err}); retrain or restore it.") from err
        self.device = resolve_device(device)
        self.vae.to(self.device)
        self.flow.to(self.device)
        if adata is not None:
            self._data = self._prepare(adata)  # fails early on genes or conditions that do not fit
            self.adata = adata
        return self

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "untrained"
        conds = ", ".join(f"{k} ({len(v)})" for k, v in self.registry["categories"].items())
        blocks = "1 block" if self.blocks.n_blocks == 1 else f"{self.blocks.n_blocks} blocks"
        return (f"SAVE model, {state}: {len(self.genes)} genes in {blocks} of "
                f"{self.blocks.block_size}; conditions: {conds}; likelihood {self.params['likelihood']}")


def active_latent_dims(mu: torch.Tensor, rows: np.ndarray | None = None, batch: int = 65_536) -> int:
    """How many latent dimensions the encoder uses: those whose mean varies across the cells
    ``rows`` (default all) by more than ACTIVE_LATENT_VARIANCE (all of them for fewer than 2 cells)."""
    rows = np.arange(len(mu)) if rows is None else np.asarray(rows)
    if len(rows) < 2:
        return int(mu.shape[1])
    chunks = (mu[torch.from_numpy(rows[start:start + batch])] for start in range(0, len(rows), batch))
    _, variance = _column_moments(chunks, mu.shape[1])
    return int((variance > ACTIVE_LATENT_VARIANCE).sum())


def collapse_message(active: int, latent_dim: int, kl_weight: float) -> str:
    if kl_weight > DEFAULTS["kl_weight"]:
        fix = f"Retrain with a lower kl_weight (this model: {kl_weight:g}; the default is {DEFAULTS['kl_weight']:g}) or another seed."
    else:
        fix = (f"At kl_weight {kl_weight:g} this usually means the cells differ too little beyond their conditions for "
               "the latent to hold (very few genes, or cells normalised to the same values); check the input, or retrain "
               "with more genes, more epochs or another seed.")
    return (f"posterior collapse: only {active} of the {latent_dim} latent dimensions vary across cells (variance of the "
            f"encoder means above {ACTIVE_LATENT_VARIANCE}), so the latent carries almost nothing of each cell and decoded "
            f"cells sit near their conditions' mean. {fix} training_summary['active_latent_dims'] records the count.")


def _column_moments(chunks, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (n - 1) variance of each column over the rows of ``chunks``, accumulated in
    float64 one chunk at a time, so that no n_cells x d tensor is held."""
    total = torch.zeros(dim, dtype=torch.float64)
    squares = torch.zeros(dim, dtype=torch.float64)
    n = 0
    for chunk in chunks:
        z = chunk.double()
        total += z.sum(0)
        squares += (z * z).sum(0)
        n += len(z)
    n = max(1, n)
    mean = total / n
    return mean, (squares - n * mean * mean) / max(1, n - 1)


def _latent_moments(mu: torch.Tensor, std: torch.Tensor, rows: np.ndarray, seed: int, batch: int = 65_536):
    """Mean and std over ``rows`` of one posterior sample per cell, batch by batch."""
    g = torch.Generator().manual_seed(seed)

    def samples():
        for start in range(0, len(rows), batch):
            sel = torch.from_numpy(rows[start:start + batch])
            yield mu[sel] + std[sel] * torch.randn(len(sel), mu.shape[1], generator=g)

    mean, var = _column_moments(samples(), mu.shape[1])
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-4)
