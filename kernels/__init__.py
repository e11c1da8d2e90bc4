"""Dynamic sparse attention of DynaST: fused Triton kernels with PyTorch references.

Tensors are token-major, tokens row-major (`y * W + x`). See docs/method.md section 4.
"""

from .candidate_lists import (
    CandidateList,
    check_index_errors,
    inner_scale_candidates,
    inter_scale_candidates,
)
from .ops import AttentionOutput, candidate_attention, dynamic_attention

__all__ = [
    "AttentionOutput",
    "CandidateList",
    "candidate_attention",
    "check_index_errors",
    "dynamic_attention",
    "inner_scale_candidates",
    "inter_scale_candidates",
]
