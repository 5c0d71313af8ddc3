"""Training loop shared by both stages: AdamW with linear warm-up, a validation split,
early stopping that restores the best weights (or the last epoch's, kept), loss history, and
progress that is a bar on a terminal and a few plain lines elsewhere (RStudio, knitr, CI logs)."""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import shutil
import sys
import sysconfig
import time
import warnings
from typing import Callable, Iterable

import torch

from . import distributed as dist_utils
from .errors import PySaveError

PRECISIONS = ("32", "bf16")
# torch.compile keeps one compiled version per network shape and mode on the code of pysave's
# Transformer.forward, which the VAE's encoder and decoder and the flow share; past dynamo's
# recompile_limit (8) it runs that code uncompiled without an error, so after a few compiled
# trainings and generations in one process torch_compile=True silently stopped paying. Inside a
# compiled() block the limit is raised to this.
COMPILE_RECOMPILE_LIMIT = 64


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is bf16 on CUDA GPUs that support it and full precision elsewhere: on the CPU, bf16
    only pays where it is native (AVX512-bf16, AMX; benchmarks/README.md), and it changes the
    numbers users get. Raises ValueError for an unknown value."""
    if precision not in PRECISIONS + ("auto",):
        raise ValueError(f"precision must be one of {PRECISIONS + ('auto',)}, got {precision!r}.")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast on the given device, or a no-op for full precision."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def compiled(modules: list[torch.nn.Module], enabled: bool, device: torch.device, log: Callable[[str], None],
             task: str = "train"):
    """Compile ``modules`` in place with ``torch.compile`` while the block runs, then undo it.

    Compilation fuses the Transformer's element-wise work (LayerNorm, AdaLN modulation, GELU,
    residual gates) into few kernels: VAE training on a 2-core CPU ran 1.34x faster in bf16 and
    ~1.1x in fp32 (benchmarks/README.md, "VAE training: bf16 and torch.compile"), after a one-off
    compilation of 95-112 s (about 11 s once torch's on-disk compile cache holds the kernels).
    The modules are restored afterwards, so encoding and sampling do not pay for a recompilation
    in eval mode, and the weights' names stay as they were (``Module.compile`` keeps them).

    ``task="generate"``: the same for the flow's Transformer while cells are generated
    (``generate(torch_compile=True)``); its messages name generation.
    """
    if not enabled:
        yield
        return
    headers = cpu_toolchain(device, task)
    import torch._dynamo  # for its exception types below

    # The compiled backward of the per-condition gather (AdaLN rows) adds with atomics on the CPU,
    # so two runs of the same seed differed by 4e-5: fit() holds torch's deterministic kernels on
    # the CPU (deterministic_on_cpu), which keep them equal (4-13% of the compiled speed on the
    # first machine, nothing measurable on an Intel Xeon with AMX). Generation runs only the
    # forward, which has no such adds (same seed, same cells: tested).
    for module in modules:
        module.compile(dynamic=True)  # the number of distinct condition rows changes between batches
    # The first steps compile (1.5-2 min on 2 cores with an empty cache): say so, or it looks hung.
    log("compiling the VAE with torch.compile during its first steps (1-2 minutes unless torch's cache holds it)"
        if task == "train" else "compiling the flow's Transformer with torch.compile for its first chunk "
        "(~20 s on 2 CPU cores unless torch's cache holds it)")
    saved_path = os.environ.get("CPLUS_INCLUDE_PATH")
    limit = max(torch._dynamo.config.recompile_limit, COMPILE_RECOMPILE_LIMIT)
    try:
        with warnings.catch_warnings(), torch._dynamo.config.patch(recompile_limit=limit):
            if headers:
                # Embedded Pythons (R's reticulate) report the venv as their base, so inductor looks
                # for Python.h there and warns; the compiler finds the real headers on this path.
                os.environ["CPLUS_INCLUDE_PATH"] = os.pathsep.join(filter(None, [headers, saved_path]))
                warnings.filterwarnings("ignore", message="Can't find Python.h")
            yield
    except torch._dynamo.exc.BackendCompilerFailed as err:
        raise PySaveError(f"torch.compile could not compile the network ({str(err).splitlines()[0]}); "
                          f"{task} without torch_compile (CLI: drop --torch-compile).") from err
    finally:
        if headers and saved_path is None:
            del os.environ["CPLUS_INCLUDE_PATH"]
        elif headers:
            os.environ["CPLUS_INCLUDE_PATH"] = saved_path
        for module in modules:
            module._compiled_call_impl = None  # Module.compile has no public undo; this is what it set


def cpu_toolchain(device: torch.device, task: str = "train") -> str | None:
    """Check that inductor can build CPU kernels: a C++ compiler and Python's headers. Returns a
    folder holding Python.h when inductor will not find it by itself, else None.

    Inductor includes Python.h from ``sysconfig.get_path("include")``. Under R's reticulate that
    path is the virtual environment's, which holds no headers; the interpreter's own build folder
    (``INCLUDEPY``) does.
    """
    if device.type != "cpu":
        return None
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler) is None:
        raise PySaveError(f"torch_compile=True needs a C++ compiler on the CPU and {compiler!r} was not found; install one "
                          f"(apt-get install g++, or conda install -c conda-forge gxx) or set CXX, or {task} without "
                          "torch_compile (CLI: drop --torch-compile).")
    if os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")):
        return None
    fallback = sysconfig.get_config_var("INCLUDEPY")
    if fallback and os.path.exists(os.path.join(fallback, "Python.h")):
        return fallback
    raise PySaveError(f"torch_compile=True needs Python's C headers (Python.h), found neither in "
                      f"{sysconfig.get_path('include')!r} nor in {fallback!r}; install them (apt-get install "
                      f"python3-dev, or conda's python) or {task} without torch_compile (CLI: drop --torch-compile).")


class _LossModule(torch.nn.Module):
    """Lets DDP wrap a loss function: DDP syncs gradients of what runs inside ``forward``."""

    def __init__(self, module: torch.nn.Module, loss_fn):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, batch, generator):
        return self.loss_fn(batch, generator)


class Progress:
    """A tqdm bar when stderr is a terminal, else one plain line every ~10% of the epochs."""

    def __init__(self, total: int, label: str, log: Callable[[str], None], enabled: bool = True):
        self.total, self.label, self.log, self.enabled = total, label, log, enabled
        self.bar = None
        self.every = max(1, math.ceil(total / 10))
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, leave=True)

    def update(self, epoch: int, metrics: dict) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text)
        elif epoch % self.every == 0 or epoch == self.total:
            self.log(f"{self.label}: epoch {epoch}/{self.total} {text}")

    def close(self, message: str | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
        if message and self.enabled:
            self.log(f"{self.label}: {message}")


@contextlib.contextmanager
def deterministic_on_cpu(device: torch.device):
    """torch's deterministic kernels while training on the CPU, restored afterwards. With more than
    one thread, the backward of the per-condition gathers (AdaLN rows) adds in parallel, so two fp32
    runs of one seed gave other weights (a fast network on 400 cells after 2 epochs, 2 threads);
    measured cost on pbmc_3tech at 2 threads, with against without: fast network fp32 999-1,057
    against 1,061 cells/s; paper network fp32 171-176 against 169-181, bf16 281-317 against 296-339
    (up to ~6%, within the rounds' spread). On GPUs pysave does not force them (docs/reproducibility.md)."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # The mode also fills every new tensor with NaN, a guard for kernels that read memory they
        # never wrote; none of ours does (same seed, same weights: tested). A profile counted ~700
        # fills a step; their cost was within the noise (benchmarks/README.md, "Exact GELU").
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def fused_adamw(device: torch.device) -> bool | None:
    """AdamW's fused kernel (one pass over each parameter, where the default runs ~10 ops each) on
    the CPU and CUDA. On an Intel Xeon with AMX, 1 thread, pbmc_3tech, it trained the fast network
    1.08-1.11x faster (bf16, compiled) and 1.03-1.11x (fp32), the flow 1.12-1.22x
    (benchmarks/README.md, "A third kind of machine"). Other devices keep torch's default. A checkpoint written
    before keeps its own setting when resumed (the optimizer's saved groups carry it), so it
    continues as it began."""
    return True if device.type in ("cpu", "cuda") else None


def fit(*args, **kwargs) -> dict:
    """``_fit`` (its arguments and result) under :func:`deterministic_on_cpu`; then the memory its
    freed activations leave with the C allocator goes back to the system."""
    device = inspect.signature(_fit).bind(*args, **kwargs).arguments["device"]
    try:
        with deterministic_on_cpu(device):
            return _fit(*args, **kwargs)
    finally:
        release_freed_memory()


def release_freed_memory() -> bool:
    """Give the system the memory that glibc keeps after frees (``malloc_trim``); False without glibc.

    A training step frees many activation blocks that glibc keeps for reuse, so the process stayed
    large after training: at 30,000 genes 2.8 GB of RSS after ``train()``, 1.7 GB with a trim after
    each stage (0.12 s each; benchmarks/README.md, "Memory at atlas width"), memory a notebook or
    an R session goes on without."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return False


def _fit(
    module: torch.nn.Module,
    loss_fn: Callable[[object, torch.Generator], dict],
    train_batches: Callable[[int], Iterable],
    val_batches: Callable[[], Iterable] | None,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    weight_decay: float,
    warmup_epochs: int,
    patience: int | None,
    device: torch.device,
    seed: int,
    label: str,
    log: Callable[[str], None],
    progress: bool = True,
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    precision: str = "32",
    keep: str = "best",
) -> dict:
    """Train ``module`` for up to ``epochs``; return the history and a summary.

    ``keep="best"`` ends with the weights of the epoch with the lowest validation loss;
    ``keep="last"`` with the last epoch's (validation is still recorded in the history).

    Every ``checkpoint_every`` epochs, ``on_checkpoint`` receives a snapshot (weights, optimizer,
    scheduler, random generator, history, best weights); passing it back as ``resume`` continues
    exactly where it stopped, so the result equals an uninterrupted run.

    Under torchrun (a process group is initialized) the loss runs inside DistributedDataParallel,
    so gradients are averaged over ranks; ``train_batches`` must then give each rank its own
    shard with the same number of steps. Metrics are averaged over ranks, so every rank takes
    the same early-stopping decision, and only rank 0 writes checkpoints and logs.
    """
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    world, rank = dist_utils.world_size(), dist_utils.rank()
    step_module: torch.nn.Module = _LossModule(module, loss_fn)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=True)
    is_main = rank == 0
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay, fused=fused_adamw(device))
    # On the CPU torch clips with a loop over the parameters (a norm and a multiply each, ~120 calls
    # a step); the foreach form does the same arithmetic in two calls, so the weights are bit-identical.
    foreach = True if device.type in ("cpu", "cuda") else None
    warmup_steps = max(1, warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    # Each rank draws its own noise (masks, reparameterisation); rank 0 matches a single process.
    generator = torch.Generator(device=device).manual_seed(seed + 100_003 * rank)
    history: dict[str, list[float]] = {}
    best = (math.inf, None, 0)  # (val loss, state, epoch)
    n_seen, first_epoch, elapsed = 0, 1, 0.0
    if resume is not None:
        module.load_state_dict(resume["module"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        history = {k: list(v) for k, v in resume["history"].items()}
        best = (resume["best_loss"], resume["best_state"], resume["best_epoch"])
        n_seen, first_epoch, elapsed = resume["n_seen"], resume["epoch"] + 1, resume["seconds"]
        log(f"{label}: resuming after epoch {resume['epoch']}")
    restore_best = keep == "best" and val_batches is not None
    bar = Progress(epochs, label, log, progress and is_main)
    start = time.perf_counter() - elapsed
    epoch = first_epoch - 1
    stopped_early = False
    for epoch in range(first_epoch, epochs + 1):
        module.train()
        sums: dict[str, float] = {}
        n_batches = 0
        for batch in train_batches(epoch):
            with autocast(device, precision):
                terms = step_module(batch, generator)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0, foreach=foreach)
            optimizer.step()
            scheduler.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
            n_seen += _batch_size(batch) * world
        metrics = _mean_over_ranks(sums, n_batches, "train", device)
        if val_batches is not None:
            module.eval()
            val_gen = torch.Generator(device=device).manual_seed(seed + 1)
            vsums: dict[str, float] = {}
            n_val = 0
            with torch.no_grad(), autocast(device, precision):
                for batch in val_batches():
                    for k, v in loss_fn(batch, val_gen).items():
                        vsums[k] = vsums.get(k, 0.0) + float(v)
                    n_val += 1
            metrics.update(_mean_over_ranks(vsums, n_val, "validation", device))
        for k, v in metrics.items():
            history.setdefault(k, []).append(v)
        bar.update(epoch, {k: v for k, v in metrics.items() if k.endswith("_loss")})
        monitored = metrics.get("validation_loss", metrics["train_loss"])
        if monitored < best[0]:
            # The best weights are restored only when validation picks them: no copy otherwise.
            best = (monitored, copy.deepcopy(module.state_dict()) if restore_best else None, epoch)
        elif patience is not None and val_batches is not None and epoch - best[2] >= patience:
            stopped_early = True
            break
        if is_main and on_checkpoint is not None and checkpoint_every and epoch % checkpoint_every == 0 and epoch < epochs:
            on_checkpoint({
                "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(), "history": history, "best_loss": best[0],
                "best_state": best[1], "best_epoch": best[2], "n_seen": n_seen, "epoch": epoch,
                "seconds": time.perf_counter() - start,
            })
    seconds = time.perf_counter() - start
    if best[1] is not None and restore_best:
        module.load_state_dict(best[1])
    module.eval()
    summary = {
        "epochs_run": epoch,
        "best_epoch": best[2],
        "kept_epoch": best[2] if restore_best else epoch,
        "best_monitored_loss": best[0],
        "stopped_early": stopped_early,
        "seconds": seconds,
        "cells_per_second": n_seen / seconds if seconds > 0 else float("nan"),
    }
    kept = f"best epoch {best[2]}" if restore_best else f"kept the last epoch, {epoch}; lowest loss at epoch {best[2]}"
    bar.close(f"done in {seconds:.1f} s, {kept} (loss {best[0]:.4g})" + (", stopped early" if stopped_early else ""))
    return {"history": history, "summary": summary}


def _mean_over_ranks(sums: dict, n_batches: int, prefix: str, device) -> dict:
    """Per-batch means of the loss terms, over the batches of all ranks."""
    keys = sorted(sums)
    totals = dist_utils.all_reduce_sum([sums[k] for k in keys] + [float(n_batches)], device)
    return {f"{prefix}_{k}": totals[i] / max(1.0, totals[-1]) for i, k in enumerate(keys)}


def _batch_size(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0])
