"""The mixed precision a training run uses, and the one line that says which and why.

Rules (docs/training.md, "Mixed precision"), first match wins:

1. set on the trainer's command line (`--mixed-precision`, `--train.mixed_precision`) or given in
   a `RunConfig` to `train.loop.train`: that value;
2. `accelerate launch --mixed_precision fp16|bf16` (seen as ACCELERATE_MIXED_PRECISION): that
   value, over the preset's. The launcher sets the variable to "no" both without the flag and
   for an explicit `no`, so "no" cannot be told from the default and is ignored;
3. the preset's value, except bf16 on a CPU without native bf16 arithmetic (x86 without
   AVX512-BF16 or AMX-BF16, ARM without BF16): bf16 autocast is emulated there, many times
   slower than fp32, so the run uses fp32 (`no`).

An explicit bf16 on such a CPU is honoured; its line warns that it is emulated.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

LAUNCHER_VARIABLE = "ACCELERATE_MIXED_PRECISION"
LAUNCHER_CHOICES = ("fp16", "bf16")
SETTER = "--mixed-precision no|fp16|bf16"
# CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)
# The x86 vector flags worth naming beside them: what the CPU has instead.
X86_VECTOR_FLAGS = ("avx2", "avx512f", "amx_tile")


@dataclass(frozen=True)
class CpuBf16:
    """Whether the CPU computes in bf16 natively, and the evidence: its model and its flags."""

    model: str
    native: bool
    flags: tuple[str, ...] = ()  # the relevant flags it has
    needs: tuple[str, ...] = X86_BF16_FLAGS  # any of these makes bf16 native

    def describe(self) -> str:
        found = ", ".join(self.flags) if self.flags else "none of the vector flags"
        if self.native:
            return f"{self.model}, native bf16 ({found})"
        return f"{self.model}, flags {found}; native bf16 needs {' or '.join(self.needs)}"


def parse_cpuinfo(text: str, machine: str) -> CpuBf16:
    """CpuBf16 from the text of /proc/cpuinfo on a `machine` (platform.machine())."""
    model, flags = "", set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif name in ("flags", "features"):
            flags.update(value.split())
    arm = machine.lower() in ("aarch64", "arm64")
    wanted = ARM_BF16_FLAGS if arm else X86_BF16_FLAGS
    shown = ARM_BF16_FLAGS if arm else X86_BF16_FLAGS + X86_VECTOR_FLAGS
    return CpuBf16(
        model=model or machine or "unknown CPU",
        native=any(flag in flags for flag in wanted),
        flags=tuple(flag for flag in shown if flag in flags),
        needs=wanted,
    )


@functools.cache
def cpu_bf16() -> CpuBf16:
    """This machine's CpuBf16: from /proc/cpuinfo on Linux; elsewhere from PyTorch's oneDNN check
    (which also counts AVX512 emulation as supported)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        return parse_cpuinfo(info.read_text(errors="replace"), platform.machine())
    import torch

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return CpuBf16(platform.processor() or platform.machine() or "unknown CPU", native, (), ())


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses ("no", "fp16" or "bf16") and the line that says so."""

    precision: str
    line: str


def choose_precision(
    configured: str, *, preset: str | None, launcher: str | None, cuda: bool, cpu: CpuBf16
) -> PrecisionChoice:
    """The module's rules. `configured`: the config's value; `preset`: the preset it came from,
    None when it was set explicitly; `launcher`: ACCELERATE_MIXED_PRECISION (None if unset);
    `cuda`: whether the run trains on a GPU."""
    emulated = not cuda and not cpu.native
    if preset is None:
        precision, origin = configured, "set by --mixed-precision / train.mixed_precision"
        if launcher in LAUNCHER_CHOICES and launcher != configured:
            origin += f", over accelerate launch --mixed_precision {launcher}"
    elif launcher in LAUNCHER_CHOICES:
        precision, origin = launcher, f"from accelerate launch --mixed_precision {launcher}"
        if launcher != configured:
            origin += f", over the {configured} of preset {preset}"
    elif configured == "bf16" and emulated:
        return PrecisionChoice(
            "no",
            f"mixed precision: no (fp32) instead of preset {preset}'s bf16: this CPU has no "
            f"native bf16 ({cpu.describe()}), so bf16 autocast would be emulated, many times "
            "slower; --mixed-precision bf16 forces it",
        )
    else:
        precision, origin = configured, f"from preset {preset}"
    line = f"mixed precision: {precision}, {origin}; {SETTER} changes it"
    if precision == "bf16" and emulated:
        line += (
            f" (warning: this CPU has no native bf16 ({cpu.describe()}): bf16 is emulated, many "
            "times slower than fp32; --mixed-precision no trains in fp32)"
        )
    return PrecisionChoice(precision, line)
