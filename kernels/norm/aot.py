"""The ahead-of-time compile cases of the normalisation kernels (`kernels.norm.triton`): forward and
backward, with and without the SPADE affine terms, bf16 and fp32, NCHW and channels_last, at the
launch config the launcher picks (one per size and layout; the kernels are not autotuned)."""

from __future__ import annotations

from ..aot.compile import AotCase, aligned_arguments, kernel_signature
from .fused import norm_config
from .triton import spade_norm_bwd_kernel, spade_norm_fwd_kernel

# (channels, pixels): deepfashion-256's finest SPADE call (64 channels, 256 x 256), whose config
# every call of 16 channels or more and 128 pixels or more shares (the coarsest, 512 x 32 x 32,
# compiles to the same code), and a 3-channel map of 9 pixels (the smallest blocks a launch gets).
AOT_NORM_SIZES = ((64, 256 * 256), (3, 9))
_POINTER_TYPES = {"MEAN": "fp32", "RSTD": "fp32"}
_KERNELS = (("norm_fwd", spade_norm_fwd_kernel), ("norm_bwd", spade_norm_bwd_kernel))


def _strides(channels: int, pixels: int, channels_last: bool) -> dict[str, int]:
    if channels_last:
        return {"stride_b": channels * pixels, "stride_c": 1, "stride_p": channels}
    return {"stride_b": channels * pixels, "stride_c": pixels, "stride_p": 1}


def aot_cases() -> list[AotCase]:
    cases = []
    for channels, pixels in AOT_NORM_SIZES:
        for channels_last in (False, True):
            config = norm_config(channels, pixels, channels_last)
            strides = _strides(channels, pixels, channels_last)
            values = {"n_channels": channels, "n_pixels": pixels, **strides}
            # Triton's JIT specialises an integer argument equal to 1 as a constant: compile the
            # unit stride the same way.
            unit = {name: 1 for name, value in strides.items() if value == 1}
            layout = "NHWC" if channels_last else "NCHW"
            for dtype_name in ("bf16", "fp32"):
                for affine in (True, False):
                    for name, fn in _KERNELS:
                        what = "spade" if affine else "positional"
                        label = (
                            f"{name} {dtype_name} {what} {layout} C={channels} P={pixels} "
                            f"P{config.block_p} C{config.block_c}"
                        )
                        constexprs = {
                            "HAS_AFFINE": affine,
                            "BLOCK_C": config.block_c,
                            "BLOCK_P": config.block_p,
                            **unit,
                        }
                        cases.append(
                            AotCase(
                                label=label,
                                module=fn.fn.__module__,
                                function=fn.fn.__name__,
                                signature=kernel_signature(fn, dtype_name, _POINTER_TYPES)
                                | {k: "constexpr" for k in unit},
                                constexprs=constexprs,
                                num_warps=config.num_warps,
                                num_stages=config.num_stages,
                                is_default=True,
                                divisible_by_16=tuple(
                                    a for a in aligned_arguments(fn, values) if a not in unit
                                ),
                            )
                        )
    return cases
