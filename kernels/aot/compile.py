"""Ahead-of-time compilation of the kernels for real GPUs, on any machine (no GPU needed).

Triton ships the NVIDIA toolchain it needs, so every kernel can be compiled to a cubin for sm_80
(A100) and sm_90 (H100) here. That catches what the CPU interpreter lets through: shapes `tl.dot`
rejects, unsupported ops, register spills and shared memory over the card's limit.

Must run without TRITON_INTERPRET (the interpreter replaces `@triton.jit` functions with objects
the compiler cannot read). Each operator declares its cases through `aot_cases()` in its `aot.py`,
with the signature and alignment helpers below; `python -m kernels.aot` (`kernels.aot.__main__`)
compiles them all.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime import interpreting

# Shared memory a block may use, per compute capability (bytes).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# Scalar arguments of every kernel that are fp32 (all other lower-case arguments are i32).
FLOAT_ARGUMENTS = ("scale", "prune_scale", "eps")


@dataclass(frozen=True)
class AotCase:
    """One kernel specialisation to compile: the jit function (by module and attribute name, so
    cases can cross process boundaries: a worker imports the module by that name), its
    signature, constexprs and launch options, and the arguments Triton would specialise as
    multiples of 16 at launch (`aligned_arguments`)."""

    label: str  # e.g. "dense_fwd Cqk=640 Cp=128 Cv=512"
    module: str
    function: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    is_default: bool = False
    divisible_by_16: tuple[str, ...] = ()


@dataclass(frozen=True)
class AotReport:
    label: str
    arch: int
    num_warps: int
    num_stages: int
    is_default: bool
    registers: int
    stack: int
    shared: int
    local: int
    shared_limit: int
    error: str = ""

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0

    @property
    def fits(self) -> bool:
        return not self.error and self.shared <= self.shared_limit


def _cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def _resource_usage(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(_cuobjdump()), "--dump-resource-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k: int(v) for k, v in found.items()}


def compile_case(case: AotCase, arch: int) -> AotReport:
    """Compile one case for `sm_<arch>`; a compiler error is reported, not raised."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    base = dict(
        label=case.label,
        arch=arch,
        num_warps=case.num_warps,
        num_stages=case.num_stages,
        is_default=case.is_default,
        shared_limit=SHARED_LIMIT.get(arch, 99 * 1024),
    )
    try:
        fn = getattr(importlib.import_module(case.module), case.function)
        # Triton specialises pointers and integers divisible by 16 at launch; compile the same, or
        # the report overstates registers for code that never runs.
        attrs = {
            (fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in case.divisible_by_16
        }
        src = ASTSource(fn=fn, signature=case.signature, constexprs=case.constexprs, attrs=attrs)
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": case.num_warps, "num_stages": case.num_stages},
        )
        usage = _resource_usage(compiled.asm["cubin"])
    except Exception as err:  # reported per case: one bad config must not hide the others
        msg = f"{type(err).__name__}: {err}".strip().splitlines()
        error = " | ".join(msg[-3:])
        return AotReport(**base, registers=0, stack=0, shared=0, local=0, error=error)
    return AotReport(
        **base,
        registers=usage.get("REG", 0),
        stack=usage.get("STACK", 0),
        shared=max(usage.get("SHARED", 0), int(compiled.metadata.shared)),
        local=usage.get("LOCAL", 0),
    )


def _compile_star(args: tuple[AotCase, int]) -> AotReport:
    return compile_case(*args)


def kernel_parameters(fn) -> list[tuple[str, bool]]:
    """(name, is_constexpr) of a jit kernel's parameters, read from the Python function itself so
    that it works on interpreted kernels too (the tests list the cases under the interpreter)."""
    params = inspect.signature(fn.fn).parameters.values()
    return [(p.name, "constexpr" in str(p.annotation)) for p in params]


def kernel_signature(fn, dtype: str, pointer_types: dict[str, str]) -> dict[str, str]:
    """Argument types of a kernel for an ahead-of-time compile, by the kernels' naming: upper-case
    names are pointers (to `dtype`, unless `pointer_types` names another type) or constexprs (by
    annotation); the others are i32 sizes, strides and counts, or fp32 scales (FLOAT_ARGUMENTS)."""
    sig = {}
    for name, is_constexpr in kernel_parameters(fn):
        if is_constexpr:
            sig[name] = "constexpr"
        elif name.isupper():
            sig[name] = "*" + pointer_types.get(name, dtype)
        else:
            sig[name] = "fp32" if name in FLOAT_ARGUMENTS else "i32"
    return sig


def aligned_arguments(fn, values: dict[str, int]) -> tuple[str, ...]:
    """The arguments Triton specialises as multiples of 16 when it launches `fn` on contiguous
    inputs: every pointer (the caching allocator aligns them) and every integer argument whose
    value in `values` is divisible by 16. A compile needs them to build the code that really runs
    (vectorised loads and gathers); `compile_case` passes them on as `tt.divisibility`."""
    return tuple(
        name
        for name, is_constexpr in kernel_parameters(fn)
        if not is_constexpr and (name.isupper() or values.get(name, 1) % 16 == 0)
    )


def compile_all(
    cases: list[AotCase], archs: list[int], workers: int | None = None
) -> list[AotReport]:
    if interpreting():
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    jobs = [(case, arch) for case in cases for arch in archs]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if workers == 1:
        return [_compile_star(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_compile_star, jobs))


def format_table(reports: list[AotReport]) -> str:
    head = (
        f"{'kernel':<52} {'sm':>3} {'warps':>5} {'stg':>3} {'reg':>4} {'stack':>5} "
        f"{'shared KB':>9} {'status'}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        status = (
            "ERROR " + r.error
            if r.error
            else ("SPILLS" if r.spills else ("SHARED>LIMIT" if not r.fits else "ok"))
        )
        star = "*" if r.is_default else " "
        lines.append(
            f"{star}{r.label:<51} {r.arch:>3} {r.num_warps:>5} {r.num_stages:>3} "
            f"{r.registers:>4} {r.stack:>5} {r.shared / 1024:>9.1f} {status}"
        )
    lines.append("* = default config")
    return "\n".join(lines)
