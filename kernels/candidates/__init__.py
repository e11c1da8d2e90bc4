"""Candidate (sparse) dynamic attention: each query attends to the keys its candidate list names
(docs/method.md section 4), and the inter- and inner-scale builders of those lists.

`lists.py` the builders and `CandidateList`; `reference.py` the specification; `cpu.py` the
gather-free CPU path; `triton.py` the Triton kernels; `tile.py` the optional query-tile forward
(`$DYNAST_CANDIDATE_FORWARD=tile`); `fused.py` their launchers and autograd.Function; `op.py` the
public `candidate_attention` (validation, backends); `tuning.py` the autotuner's runners; `aot.py`
the ahead-of-time compile cases. Design notes: docs/kernels-candidates.md.
"""

from .lists import (
    CandidateList,
    candidate_list,
    check_index_errors,
    inner_scale_candidates,
    inter_scale_candidates,
)
from .op import candidate_attention

__all__ = [
    "CandidateList",
    "candidate_attention",
    "candidate_list",
    "check_index_errors",
    "inner_scale_candidates",
    "inter_scale_candidates",
]
