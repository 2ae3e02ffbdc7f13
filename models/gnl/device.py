"""Where and in what precision the toolchain computes.

`--device auto` takes a CUDA GPU when PyTorch sees one, else the CPU.
`--precision auto` takes bfloat16 autocast where the hardware does it
natively: a CUDA GPU, or a CPU with AVX512-BF16 or AMX (oneDNN then runs
bf16 convolutions on them: a ResNet18 step ran 1.5-2.7x faster than fp32
on an AMX Xeon, and GNL's stage-1 step 2.4x faster on a 2-core AMD EPYC
with AVX512-BF16, to the same metrics: models/RESULTS.md). Elsewhere bf16
would be emulated and slower, so `auto` keeps fp32. Losses are always
computed in fp32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The first CPU's feature flags (empty when /proc/cpuinfo is unreadable)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: cuda when available, else cpu. Asking for cuda without one is an error."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def pick_precision(name: str, device: torch.device, flags: set[str] | None = None) -> torch.dtype | None:
    """bfloat16 for autocast, or None for plain fp32 (see the module doc)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    native = device.type == "cuda" or bool(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))
    return torch.bfloat16 if native else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
