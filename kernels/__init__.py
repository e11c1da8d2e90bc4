"""Dynamic sparse attention of DynaST: fused Triton kernels with PyTorch references.

Tensors are token-major, tokens row-major (`y * W + x`). See docs/method.md section 4.

Sizes, named alike in the kernels, their launchers, the tuning keys and the docs:

    B         batch
    Nq, Nk    query and key tokens per sample
    Cqk       channels of q and k
    Cp        channels of q_prune and k_prune
    Cv        channels of v and out
    Cw        channels of warp_values and warp (3 in the model; 0: no warp output)
    k         top-k indices per query (`topk` in the operators and launchers, `top_k` in kernels)
    n_cand    candidates per list: 4k inter-scale, 5k inner-scale (M in the docs and in the
              candidate kernels' tuning keys)
    G         queries sharing one candidate list: 4 (a 2x2 window, inter-scale lists) or 1
    n_src     rows of the previous top-k a list derives from: Nq inner, Nq/4 inter (`src_k`
              its k); grid_h x grid_w the query grid

Indices are int32 wherever B * Nk < 2^31 (what the builders make), else int64; both are read.

Block sizes (`tl.constexpr`) of the fused kernels:

    BLOCK_M            queries per program. The candidate kernels count them in lists:
                       BLOCK_G groups of GROUP = G queries (BLOCK_Q in their launch configs)
    BLOCK_N            keys per tile: the dense kernels stream the Nk keys in tiles of BLOCK_N,
                       a candidate program holds a list's n_cand keys in one (padded) tile
    BLOCK_D, BLOCK_DP  channels per step of the loops over Cqk, Cp, Cv and Cw
    BLOCK_DV, BLOCK_W
    BLOCK_V, BLOCK_C   output channels per program: of out (dense forward), of one gradient
                       (dense streamed backward)
    BLOCK_K            the dense forward's running top-k list: next_pow2(k)

and one flag besides the feature flags: DERIVE, where a candidate kernel's candidates come from:
0 a list it reads, 1 / 2 derived in registers from the previous top-k (inner / inter).

Launch configs keep the keys the tuning tables were written with: dense BLOCK_M, BLOCK_N, BLOCK_D
and BLOCK_V or BLOCK_C; candidates BLOCK_Q and BLOCK_C (one channel step, clipped per tensor into
BLOCK_D, BLOCK_DP, BLOCK_DV and BLOCK_W).

Layout: one folder per operator family, each with the same files: `reference.py` (the
specification), `triton.py` (the jit kernels), `fused.py` (their launch configs, launchers and
autograd.Function), `op.py` (the public operator: validation, dtype policy, backends), `tuning.py`
(the autotuner's runners) and `aot.py` (the ahead-of-time compile cases).

    dense/        `dynamic_attention`; the kernels' building blocks in `tiles.py`
    candidates/   `candidate_attention`, the list builders and `CandidateList` (`lists.py`), the
                  gather-free CPU path (`cpu.py`)
    norm/         `positional_norm`, `spade_modulation` (not autotuned: no `tuning.py`)
    tuning/       the tuning table (`table.py`, shipped winners in `shipped.json`) and the
                  autotuner (`autotune.py`, run as `python -m kernels.autotune`)
    aot/          the ahead-of-time compile report (`python -m kernels.aot`)

and beside them `call.py` (the call type: `AttentionInputs` and `AttentionSettings` in,
`AttentionOutput` out; the checks and backend choice both attention operators share),
`custom_ops.py` (both operators registered with torch.library: what they run while
`torch.compile` traces), `shapes.py` (the model's sizes), `runtime.py` (interpreter
switch, output buffers), `checks.py` and `files.py` (the number validator and the atomic writer
every package uses).

`candidate_attention(...)` on a GPU, from the public operator to the Triton launch:
`candidates/op.py` -> `candidates/fused.py` -> `candidates/triton.py`.
"""

from .call import AttentionOutput
from .candidates import (
    CandidateList,
    candidate_attention,
    check_index_errors,
    inner_scale_candidates,
    inter_scale_candidates,
)
from .dense import dynamic_attention
from .norm import positional_norm, spade_modulation

__all__ = [
    "AttentionOutput",
    "CandidateList",
    "candidate_attention",
    "check_index_errors",
    "dynamic_attention",
    "inner_scale_candidates",
    "inter_scale_candidates",
    "positional_norm",
    "spade_modulation",
]
