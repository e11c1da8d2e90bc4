"""The positional normalisation and SPADE's modulation of the generator, reference and fused.

`reference.py` the specification (bit for bit what the model always ran); `triton.py` the Triton
kernels; `fused.py` their launchers and autograd.Function; `op.py` the public `positional_norm`
and `spade_modulation` (validation, backends); `aot.py` the ahead-of-time compile cases. The
kernels are not autotuned: one launch rule per layout.
"""

from .op import positional_norm, spade_modulation

__all__ = ["positional_norm", "spade_modulation"]
