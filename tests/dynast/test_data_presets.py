"""The real-data training presets: each selects its kind and encoding, and trains one step on a
fixture written in its dataset's original layout (a narrowed model at 32 pixels)."""

from __future__ import annotations

import json

import pytest
import torch
from _real_data import write_ade20k, write_celebahq, write_deepfashion

from dynast.data import build_dataset
from train.config import run_preset
from train.main import resolve_run
from train.precision import CpuBf16

# deepfashion-512 narrowed to 32 px is the deepfashion-256 run: its selection is tested below.
WRITERS = {
    "deepfashion-256": write_deepfashion,
    "celebahq-edge-256": write_celebahq,
    "ade20k-256": write_ade20k,
}
NARROW = [
    "--model.image_size", "32", "--data.image_size", "32", "--model.ngf", "8",
    "--model.ndf", "8", "--model.disc_layers", "3", "--model.num_scales", "3",
    "--model.pos_unit", "4", "--model.prune_unit", "4", "--model.num_discriminators", "1",
    "--no-vgg", "--train.batch_size", "2",
    "--train.eval_pairs", "1", "--train.eval_batch_size", "1", "--train.sample_rows", "1",
    "--max-steps", "1", "--train.num_workers", "0",
]  # fmt: skip


@pytest.mark.parametrize(
    "name,kind,channels,load,flip",
    [
        ("deepfashion-256", "deepfashion", 20, None, False),
        ("deepfashion-512", "deepfashion", 20, None, False),
        ("celebahq-edge-256", "celebahq-edge", 15, 286, True),
        ("ade20k-256", "ade20k", 151, 286, True),
    ],
)
def test_presets_select_their_kind(name, kind, channels, load, flip):
    cfg = run_preset(name)
    assert cfg.data.kind == kind and cfg.data.num_classes == channels == cfg.model.semantic_nc
    assert cfg.data.load_size == load and cfg.data.flip is flip
    assert cfg.data.image_size == cfg.model.image_size == (512 if "512" in name else 256)
    if kind == "deepfashion":  # DynaST's train_deepfashion.sh: self pairs only
        assert cfg.data.real_reference_probability == 0.0 and cfg.data.check_identity


@pytest.mark.parametrize("name", list(WRITERS))
def test_one_training_step_per_preset_on_its_fixture(name, tmp_path, capsys, monkeypatch):
    """On a CPU faked to lack native bf16 (and no GPU), the presets' bf16 falls back to fp32,
    the run says so and its config.json records it (Accelerate's process-wide state keeps the
    first in-process run's precision, so every run here must choose the same)."""
    from train.loop import train

    monkeypatch.setattr("train.main.cpu_bf16", lambda: CpuBf16("test CPU", native=False))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    root = WRITERS[name](tmp_path / "data")
    run_dir = tmp_path / "run"
    overrides = [*NARROW, "--data.root", str(root), "--output-dir", str(run_dir)]
    if run_preset(name).data.load_size is not None:
        overrides += ["--data.load_size", "36"]
    run = resolve_run(["--preset", name, *overrides])
    cfg = run.config
    sample = build_dataset(cfg.data, "train")[0]
    assert sample["semantic"].shape == (cfg.model.semantic_nc, 32, 32)
    result = train(cfg, precision=run.precision)
    assert result.step == 1
    assert f"mixed precision: no (fp32) instead of preset {name}'s bf16" in capsys.readouterr().out
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data"]["kind"] == cfg.data.kind and saved["train"]["mixed_precision"] == "no"
    assert (saved["train"]["loss"]["vgg"], saved["train"]["loss"]["vgg_mse"]) == (0, 0)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m for m in metrics if "loss/warp" in m]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses[-1].values())
    assert (run_dir / "final" / "model.safetensors").is_file()

    if name == "celebahq-edge-256":
        generate_and_calc(name, root, run_dir, tmp_path, capsys)


def generate_and_calc(name, root, run_dir, tmp_path, capsys):
    """`eval.generate --preset NAME --data.root DIR` reads the kind's test pairs like training,
    and `eval calc` scores what it wrote."""
    from eval.cli import main as eval_main
    from eval.generate import main as generate_main

    out = tmp_path / "generated"
    args = ["--model", str(run_dir / "final"), "--out", str(out), "--cpu", "--targets"]
    assert generate_main([*args, "--preset", name, "--data.root", str(root)]) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["data"]["config"]["kind"] == "celebahq-edge"
    assert record["data"]["config"]["image_size"] == 32  # follows the model
    assert len(list((out / "images").iterdir())) == 1  # val.txt has one line
    calc = ["calc", "--real", str(out / "targets"), "--fake", str(out / "images")]
    assert eval_main([*calc, "--metrics", "l1", "--device", "cpu"]) == 0
    assert "l1" in capsys.readouterr().out
    # A field that does not exist is one clear error.
    assert generate_main([*args, "--preset", name, "--data.nope", "1"]) == 2
    assert "--data.nope: unknown field 'nope'" in capsys.readouterr().err


def test_warp_loss_counts_only_pairs_of_the_same_appearance():
    """The release's `sample_weights = self_ref / sum(self_ref)`: the warp term is weighted by
    same_appearance (and a ground truth), the other reconstruction terms by has_target."""
    from train.steps import global_weights

    class OneProcess:
        def reduce(self, tensor, reduction):
            return tensor

    micro = [
        {"has_target": torch.tensor([True, True]), "same_appearance": torch.tensor([True, False])},
        {"has_target": torch.tensor([True, False]), "same_appearance": torch.tensor([True, True])},
    ]
    weights = global_weights(OneProcess(), micro)
    assert [w.tolist() for w in weights.same_appearance] == [[1.0, 0.0], [1.0, 0.0]]
    assert float(weights.global_same) == 2.0 and float(weights.global_target) == 3.0
    assert float(weights.global_all) == 4.0
    # A dataset without the flag falls back to has_target.
    legacy = global_weights(OneProcess(), [{"has_target": torch.tensor([True, False])}])
    assert legacy.same_appearance[0].tolist() == [1.0, 0.0]
