"""Ahead-of-time compilation of the kernels for real GPUs, on any machine (no GPU needed):
`python -m kernels.aot` (`__main__.py`) with the machinery in `compile.py`. Each operator declares
its cases in its `aot.py`."""
