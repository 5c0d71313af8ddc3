"""Data-parallel training with torch.distributed, started by ``torchrun``.

``torchrun --nproc_per_node=N -m pysave train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK (and
MASTER_ADDR / MASTER_PORT, or a c10d rendezvous across nodes); :func:`init_from_env` joins
that group with gloo on CPU and NCCL on GPU. Everything else in pysave asks this module
which rank it is, so the single-process path is the world of size 1.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import PySaveError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 writes models, checkpoints and logs; the other ranks only compute."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the torchrun process group if there is one; return this rank's device.

    On CUDA each rank takes GPU ``LOCAL_RANK``; on CPU every rank uses the CPU (gloo).
    """
    if not launched_by_torchrun() or is_distributed():
        if is_distributed() and device.type == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return device
    if not dist.is_available():
        raise PySaveError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run a single process.")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise PySaveError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) here; "
                              "use --nproc_per_node at most the number of GPUs.")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    if device.type == "mps":
        raise PySaveError("distributed training on Apple MPS is not supported by torch.distributed; use --device cpu.")
    dist.init_process_group("gloo")
    return device


def shutdown() -> None:
    """Leave the process group, all ranks together: rank 0 may still be writing the model when
    the others finish. A rank that tore its gloo connections down while a peer still used them
    is the likely cause of one abort at exit in CI ("terminate called without an active
    exception"; not reproduced in 52 torchrun trainings here)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum floats over ranks (validation losses, cell counts)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_rows(part: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate each rank's rows in rank order (``counts[r]`` rows on rank r)."""
    if not is_distributed():
        return part
    width = max(counts)
    padded = torch.zeros((width,) + tuple(part.shape[1:]), dtype=part.dtype, device=part.device)
    padded[: part.shape[0]] = part
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded)
    return torch.cat([p[:n] for p, n in zip(pieces, counts)])


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous share of ``n`` rows (for encoding all cells once)."""
    r, w = rank(), world_size()
    return (n * r) // w, (n * (r + 1)) // w
