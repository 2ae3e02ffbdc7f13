"""Device and precision choice (gnl/device.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gnl.device import autocast, cpu_flags, pick_device, pick_precision


def test_bf16_only_where_the_cpu_has_it() -> None:
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu, flags={"avx512f", "avx512_vnni"}) is None
    assert pick_precision("auto", cpu, flags={"avx512_bf16"}) is torch.bfloat16
    assert pick_precision("auto", cpu, flags={"amx_bf16", "amx_tile"}) is torch.bfloat16
    assert pick_precision("fp32", cpu, flags={"amx_bf16"}) is None
    assert pick_precision("bf16", cpu, flags=set()) is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        pick_precision("fp16", cpu)


def test_cpu_flags_reads_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_device_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
