"""FLOP and byte model of the dynamic attention operators, per pass: the one place it is written.

Both are properties of the problem, not of an implementation: every implementation of a shape is
divided by the same numbers, so TFLOP/s and GB/s compare like with like. docs/benchmarks.md
explains each term.

Notation: B batch, Nq queries, Nk keys, M keys per query (Nk when dense), Cqk, Cp, Cv, Cw channels,
k top-k, P = B * Nq * M query-key pairs, e bytes per float element, i bytes per candidate index.

FLOPs (two per multiply-add; softmax, mask, exponentials and top-k selection are not counted):
- forward: scores 2P*Cqk, prune logits 2P*Cp, values 2P*Cv, warp 2P*Cw;
- backward (flash-style, scores recomputed): scores and prune logits again (2P*Cqk + 2P*Cp),
  dV and d(p*m) (2 * 2P*Cv), dQ and dK (2 * 2P*Cqk), dQp and dKp (2 * 2P*Cp), dW and dw (2 * 2P*Cw);
- both = forward + backward.

Bytes (compulsory traffic: each distinct tensor read or written once; what a perfect kernel moves):
- forward reads q, q_prune (B*Nq*(Cqk+Cp)*e), k, k_prune, v, warp values (B*Nk*(Cqk+Cp+Cv+Cw)*e)
  and the candidates (B*Nq*M*i; none when dense); writes out, conf, warp (B*Nq*(Cv+1+Cw)*e) and the
  top-k (B*Nq*k*8, int64);
- backward reads the same inputs and the output gradients (B*Nq*(Cv+1+Cw)*e), writes the input
  gradients (the inputs' float sizes again);
- both = forward + backward.
"""

from __future__ import annotations

from dataclasses import dataclass

PASSES = ("fwd", "bwd", "both")


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float


def _check_pass(pass_: str) -> None:
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")


def attention_cost(
    *,
    batch: int,
    nq: int,
    nk: int,
    m: int | None,
    cqk: int,
    cp: int,
    cv: int,
    cw: int,
    k: int,
    element_bytes: int,
    index_bytes: int = 8,
    pass_: str,
) -> Cost:
    """FLOPs and compulsory bytes of one pass; `m` None means dense (every key)."""
    _check_pass(pass_)
    dense = m is None
    pairs = batch * nq * (nk if dense else m)
    fwd_flops = 2 * pairs * (cqk + cp + cv + cw)
    bwd_flops = 2 * pairs * (3 * cqk + 3 * cp + 2 * cv + 2 * cw)

    query_side = batch * nq * (cqk + cp) * element_bytes
    key_side = batch * nk * (cqk + cp + cv + cw) * element_bytes
    candidates = 0 if dense else batch * nq * m * index_bytes
    outputs = batch * nq * (cv + 1 + cw) * element_bytes
    topk = batch * nq * k * 8
    fwd_bytes = query_side + key_side + candidates + outputs + topk
    # Backward: inputs read, output gradients read, input gradients written.
    bwd_bytes = query_side + key_side + candidates + outputs + query_side + key_side

    if pass_ == "fwd":
        return Cost(fwd_flops, fwd_bytes)
    if pass_ == "bwd":
        return Cost(bwd_flops, bwd_bytes)
    return Cost(fwd_flops + bwd_flops, fwd_bytes + bwd_bytes)
