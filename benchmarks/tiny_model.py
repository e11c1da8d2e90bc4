"""The tiny model the step benchmarks run with `--tiny`: a CPU smoke run of seconds that walks
every code path of the real sizes (a dense scale, then an inter- and an inner-scale block). Not
the attention benchmarks' and autotuner's `tiny` shape set (`kernels.shapes.tiny_shapes`), which
are attention problems of awkward sizes with no model behind them."""

from __future__ import annotations

from dynast.config import DynaSTConfig

TINY_SIZE = 16
TINY_BATCH = 2


def tiny_model_config(attention_backend: str = "auto") -> DynaSTConfig:
    """The tiny model (named "tiny" in the benchmarks' tables and CSV rows)."""
    return DynaSTConfig(
        name="tiny",
        semantic_nc=4,
        image_size=TINY_SIZE,
        ngf=4,
        num_scales=2,
        blocks_per_scale=2,
        topk=2,
        pos_unit=2,
        prune_unit=2,
        max_multiplier=2,
        ndf=4,
        disc_layers=2,
        attention_backend=attention_backend,
    )
