"""`train.compile`: the loop trains the compiled generator and saves the plain one.

Slow: even with the aot_eager backend (Dynamo and AOTAutograd, no C++ compilation; the default
inductor backend would take many minutes on two shared cores) tracing the generator's training
graph takes about a minute of CPU."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from _tiny_run import TINY_RUN
from safetensors.torch import load_file

from train.loop import train
from train.main import resolve_config


@pytest.mark.slow
def test_compiled_training_logs_the_eager_losses_and_saves_plain_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no VGG weights: VGG off
    calls = []
    real_compile = torch.compile

    def aot_eager_compile(model, **kwargs):
        calls.append(type(model).__name__)
        return real_compile(model, backend="aot_eager", **kwargs)

    losses = {}
    for compiled in (False, True):
        run_dir = tmp_path / f"run-{compiled}"
        cfg, _ = resolve_config([*TINY_RUN, "--output-dir", str(run_dir),
                                 "--train.compile", str(compiled).lower()])  # fmt: skip
        with monkeypatch.context() as patch:
            patch.setattr(torch, "compile", functools.partial(aot_eager_compile))
            train(cfg)
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = next(r for r in records if "loss/warp" in r)
        weights = load_file(str(run_dir / "final" / "model.safetensors"))
        assert not any("_orig_mod" in key for key in weights), sorted(weights)[:3]
    assert calls == ["Generator"]  # only the compiled run compiled, and only the generator
    for name, value in losses[False].items():
        if name.startswith("loss/"):
            # Means of order-one terms: rounding differences only (two steps, same data).
            assert losses[True][name] == pytest.approx(value, rel=1e-3, abs=1e-5), name
