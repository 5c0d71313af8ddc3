"""Where a benchmark result came from: the code and the machine (shared by the benchmarks).

Results of the same code differ between this project's machines (Kang models up to 0.024 R^2
apart; bf16 matrix products 10x fp32 on an Intel Xeon with AMX, 2.4x on an AMD EPYC), so every
results file records both.
"""
from __future__ import annotations

import glob
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_UNITS = (("avx512_bf16", "AVX512-bf16"), ("amx_bf16", "AMX"))


def cpu_info() -> dict:
    """Model, family, stepping, microcode, the vector flags MKL / oneDNN dispatch on, and caches."""
    cpu = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model", "stepping", "microcode") and key.strip() not in cpu:
                    cpu[key.strip()] = value.strip()
                elif key.strip() == "flags" and "vector_flags" not in cpu:
                    cpu["vector_flags"] = " ".join(f for f in value.split() if f.startswith(("avx", "fma", "amx", "sse4")))
    except OSError:  # not Linux: the model as platform gives it
        cpu["model name"] = platform.processor() or platform.machine()
    # Cache sizes: one CPU model comes in parts with other caches, and BLAS blocking follows them.
    caches = []
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            level, kind, size = (open(os.path.join(index, name)).read().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        caches.append(f"L{level}{ {'Data': 'd', 'Instruction': 'i'}.get(kind, '')} {size}")
    if caches:
        cpu["caches"] = ", ".join(caches)
    return cpu


def cpu_description(cpu: dict | None = None) -> str:
    """The CPU's model name, family and model, and its native bf16 units, as the speed tables name
    it. The family tells apart hosts that share a name: "AMD EPYC" was family 25 (Zen 4) and 26 (Zen 5) here."""
    cpu = cpu_info() if cpu is None else cpu
    flags = set(cpu.get("vector_flags", "").split())
    details = [f"family {cpu['cpu family']} model {cpu['model']}"] if "cpu family" in cpu and "model" in cpu else []
    details += [name for flag, name in BF16_UNITS if flag in flags]
    return cpu.get("model name", "") + (f" ({', '.join(details)})" if details else "")


def git(*cmd) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True,  # the root: pathspecs are relative
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_provenance() -> dict:
    """The code (commit, and whether python/ or benchmarks/ had uncommitted changes) and the machine."""
    import torch

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "python", "benchmarks",
                  ":(exclude)benchmarks/README.md", ":(exclude)benchmarks/results")  # the benchmarks write these themselves
    commit = git("rev-parse", "HEAD")
    gpu = {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda} if torch.cuda.is_available() else {}
    return {"commit": commit or os.environ.get("PYSAVE_COMMIT", ""),  # a copy without .git (a lent GPU machine) is told it
            "uncommitted_code_changes": bool(changed) if commit else None,
            "cpu": cpu_info(), "cpu_count": os.cpu_count(), "torch": torch.__version__, **gpu,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}
