"""Dense dynamic attention: every query attends to every key (docs/method.md section 4).

`reference.py` the specification (and the recipe the candidate reference shares); `tiles.py` and
`triton.py` the Triton kernels; `fused.py` their launchers, backwards and autograd.Function;
`op.py` the public `dynamic_attention` (validation, backends); `tuning.py` the autotuner's runners;
`aot.py` the ahead-of-time compile cases. Derivations: docs/kernels-dense.md.
"""

from .op import dynamic_attention

__all__ = ["dynamic_attention"]
