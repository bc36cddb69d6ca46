"""The hardware a verb runs on: the one ``--device`` resolver, and what the CPU can do fast
(shared by the trainer's ``precision=auto`` and ``sslseq bench train``).

bf16 autocast pays on a CPU only where it has bf16 matrix instructions: AMX-BF16 or
AVX512-BF16 on x86 (oneDNN's bf16 GEMMs), BF16 (BFMMLA) on aarch64. Elsewhere torch
converts bf16 to fp32 around every multiply and a bf16 matmul runs many times slower than
fp32 (41 vs 1.2 GFLOP/s on the AMD EPYC without AVX-512 this project is developed on).
The flags are read from torch's own CPUID probe (``torch.cpu.get_capabilities``) and, on
Linux, ``/proc/cpuinfo``; either one naming a feature counts.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["CpuBf16", "cpu_bf16", "detect_cpu_bf16", "resolve_device"]


def resolve_device(device: str = "auto"):
    """The ``torch.device`` of a ``--device`` option: ``auto`` is CUDA when a GPU is visible, else
    the CPU; a name torch does not know, or CUDA without a GPU, is a clear error."""
    import torch

    from sslseq.utils import SslseqError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SslseqError(f"--device {device!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SslseqError(f"--device {device}: no CUDA GPU is visible; use --device cpu (or auto)")
    return dev

X86_NATIVE = ("amx_bf16", "avx512_bf16")
ARM_NATIVE = ("bf16",)


@dataclass(frozen=True)
class CpuBf16:
    native: bool  # bf16 matrix instructions found: bf16 autocast is worth using
    features: tuple[str, ...]  # the native bf16 features found
    sources: tuple[str, ...]  # where flags could be read
    capability: str  # torch's vector ISA for its CPU kernels (torch.backends.cpu.get_cpu_capability)
    onednn_bf16: bool | None  # oneDNN accepts bf16 here (True also where it only emulates it)

    def describe(self) -> str:
        found = f"native bf16 ({', '.join(self.features)})" if self.native else "no native bf16 matrix instructions"
        where = ", ".join(self.sources) or "no CPU flags readable"
        onednn = {None: "?", True: "yes", False: "no"}[self.onednn_bf16]
        return f"CPU: {found}; torch kernels {self.capability}, oneDNN bf16 {onednn} (flags from {where})"


def _cpuinfo_flags(text: str) -> set[str]:
    """Feature words of ``/proc/cpuinfo`` (x86 ``flags``, aarch64 ``Features``), all processors."""
    out: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            out.update(value.split())
    return out


def detect_cpu_bf16(
    capabilities: Mapping[str, object] | None,
    cpuinfo: str | None,
    machine: str,
    capability: str = "?",
    onednn_bf16: bool | None = None,
) -> CpuBf16:
    """Judge from given facts (pure; :func:`cpu_bf16` reads them from this machine)."""
    arm = machine.lower() in ("aarch64", "arm64")
    wanted = ARM_NATIVE if arm else X86_NATIVE
    found: set[str] = set()
    sources = []
    if capabilities is not None:
        sources.append("torch.cpu.get_capabilities")
        found.update(f for f in wanted if capabilities.get(f) is True)
    if cpuinfo is not None:
        sources.append("/proc/cpuinfo")
        found.update(f for f in wanted if f in _cpuinfo_flags(cpuinfo))
    features = tuple(f for f in wanted if f in found)
    return CpuBf16(bool(features), features, tuple(sources), capability, onednn_bf16)


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> CpuBf16:
    """This machine's :class:`CpuBf16` (probed once per process)."""
    import torch

    caps = None
    get_caps = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get_caps is not None:
        try:
            caps = dict(get_caps())
        except Exception:  # noqa: BLE001 - a probe that fails tells nothing, it is not an error
            caps = None
    cpuinfo = None
    proc = Path("/proc/cpuinfo")
    if proc.is_file():
        try:
            cpuinfo = proc.read_text(errors="replace")
        except OSError:
            cpuinfo = None
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001
        capability = "?"
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        onednn = None
    return detect_cpu_bf16(caps, cpuinfo, platform.machine(), capability, onednn)
