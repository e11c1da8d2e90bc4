"""One registry of presets: the model presets of dynast.config and the sizes table of
kernels.shapes (which the autotuner, the AOT report and the benchmarks read, since kernels cannot
import dynast) name the same models with the same sizes."""

from __future__ import annotations

import re

import pytest

from dynast.config import PRESETS
from kernels import shapes
from kernels.tuning import autotune


def test_the_kernels_table_has_one_row_per_model_preset():
    assert set(shapes.MODELS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_kernels_table_agrees_with_the_model_config(name):
    assert PRESETS[name].attention_sizes == shapes.MODELS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_shapes_of_a_preset_are_the_blocks_of_its_generator(name):
    cfg = PRESETS[name]
    found = shapes.preset_shapes(name)
    dense = [s for s in found if s.block == "dense"]
    assert len(dense) == 1 and (dense[0].height, dense[0].cqk) == (
        cfg.coarsest_size,
        cfg.qk_channels[0],
    )
    assert len(found) == 1 + 2 * (cfg.num_scales - 1)
    for scale in range(1, cfg.num_scales):
        inter, inner = found[2 * scale - 1 : 2 * scale + 1]
        assert (inter.block, inner.block) == ("inter", "inner")
        assert inter.height == inner.height == cfg.coarsest_size * 2**scale
        assert (inner.cqk, inner.cp, inner.cv, inner.k) == (
            cfg.qk_channels[scale],
            cfg.prune_channels[scale],
            cfg.value_channels[scale],
            cfg.topk,
        )


def test_the_autotuner_takes_the_model_presets_and_the_tiny_shape_set():
    # The choices as the parser's public usage line lists them (`--preset {a,b,...}`).
    usage = autotune.argument_parser().format_usage()
    choices = re.search(r"--preset \{([^}]*)\}", usage).group(1).split(",")
    assert set(choices) == set(PRESETS) | {"tiny"}
