"""The precision a run uses (train.precision): the CPU's bf16 capability read from its flags, the
rules with the capability, the GPU and the launcher's variable faked, and the command line that
records the choice in the run's config; and the VGG19 weights a paper dataset needs."""

from __future__ import annotations

import pytest

import train.main
from train.main import main, resolve_run
from train.precision import CpuBf16, choose_precision, parse_cpuinfo

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) 8480+\nflags\t: avx2 avx512f amx_tile amx_bf16\n"
ZEN4 = "model name\t: AMD EPYC 9654\nflags\t: avx2 avx512f avx512_bf16\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"
SLOW = CpuBf16("AMD EPYC", native=False, flags=("avx2",))
FAST = CpuBf16("Xeon", native=True, flags=("amx_bf16",))


def test_native_bf16_is_read_from_the_cpu_flags():
    epyc = parse_cpuinfo(EPYC, "x86_64")
    assert (epyc.model, epyc.native, epyc.flags) == ("AMD EPYC", False, ("avx2",))
    assert "native bf16 needs avx512_bf16 or amx_bf16" in epyc.describe()
    assert parse_cpuinfo(SAPPHIRE, "x86_64").native and parse_cpuinfo(ZEN4, "x86_64").native
    assert parse_cpuinfo(SAPPHIRE, "x86_64").flags == ("amx_bf16", "avx2", "avx512f", "amx_tile")
    assert parse_cpuinfo(GRAVITON3, "aarch64").native
    graviton2 = parse_cpuinfo(GRAVITON2, "aarch64")
    assert not graviton2.native and graviton2.needs == ("bf16",)


@pytest.mark.parametrize(
    "configured,preset,launcher,cuda,cpu,chosen,said",
    [
        # The preset's bf16: kept where bf16 is native, fp32 on a CPU that would emulate it.
        ("bf16", "deepfashion-256", None, False, SLOW, "no", "instead of preset deepfashion-256"),
        ("bf16", "deepfashion-256", "no", False, SLOW, "no", "would be emulated"),
        ("bf16", "deepfashion-256", None, False, FAST, "bf16", "from preset deepfashion-256"),
        ("bf16", "deepfashion-256", None, True, SLOW, "bf16", "from preset deepfashion-256"),
        ("no", "synthetic-64", None, False, SLOW, "no", "from preset synthetic-64"),
        # accelerate launch --mixed_precision fp16|bf16 wins over the preset.
        ("bf16", "deepfashion-256", "fp16", False, SLOW, "fp16", "over the bf16 of preset"),
        ("no", "synthetic-64", "bf16", True, SLOW, "bf16", "from accelerate launch"),
        ("bf16", "ade20k-256", "bf16", False, SLOW, "bf16", "warning: this CPU has no native"),
        # The trainer's own flag wins over both, and an explicit bf16 is kept (with a warning).
        ("no", None, "fp16", False, SLOW, "no", "over accelerate launch --mixed_precision fp16"),
        ("bf16", None, None, False, SLOW, "bf16", "bf16 is emulated"),
        ("fp16", None, None, True, FAST, "fp16", "set by --mixed-precision"),
    ],
)
def test_the_precision_chosen_in_each_case(configured, preset, launcher, cuda, cpu, chosen, said):
    choice = choose_precision(configured, preset=preset, launcher=launcher, cuda=cuda, cpu=cpu)
    assert choice.precision == chosen
    assert choice.line.startswith(f"mixed precision: {chosen}") and said in choice.line
    assert "--mixed-precision" in choice.line and "\n" not in choice.line


@pytest.fixture
def slow_cpu(monkeypatch):
    """No GPU, a CPU without native bf16, no launcher."""
    monkeypatch.setattr(train.main, "cpu_bf16", lambda: SLOW)
    monkeypatch.setattr(train.main.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "flags,launcher,chosen",
    [
        ([], None, "no"),
        ([], "no", "no"),
        ([], "fp16", "fp16"),
        (["--mixed-precision", "bf16"], None, "bf16"),
        (["--mixed-precision", "no"], "bf16", "no"),
        (["--train.mixed_precision", "no"], "fp16", "no"),
    ],
)
def test_the_command_line_records_the_precision_used(slow_cpu, flags, launcher, chosen):
    if launcher is not None:
        slow_cpu.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    run = resolve_run(["--preset", "deepfashion-256", *flags])
    assert run.config.train.mixed_precision == run.precision.precision == chosen


def test_dry_run_prints_the_precision_line(slow_cpu, capsys):
    assert main(["--preset", "celebahq-edge-256", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert '"mixed_precision": "no"' in captured.out
    assert captured.err.startswith("mixed precision: no (fp32) instead of preset")


def test_no_vgg_turns_both_terms_off_and_clashes_with_setting_them():
    loss = resolve_run(["--preset", "ade20k-256", "--no-vgg"]).config.train.loss
    assert (loss.vgg, loss.vgg_mse) == (0, 0)
    with pytest.raises(ValueError, match=r"--no-vgg sets train\.loss\.vgg_mse to 0"):
        resolve_run(["--no-vgg", "--train.loss.vgg_mse", "1"])


def test_a_paper_dataset_without_vgg_weights_is_one_error_saying_where_they_go(
    tmp_path, monkeypatch, capsys
):
    from _real_data import write_deepfashion

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    root = write_deepfashion(tmp_path / "df")
    run_dir = tmp_path / "run"
    args = ["--preset", "deepfashion-256", "--data.root", str(root), "--output-dir", str(run_dir)]
    assert main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert "kind 'deepfashion' trains with the paper's VGG19 losses" in errors[0]
    assert str(expected) in errors[0] and "--no-vgg" in errors[0]
    assert not run_dir.exists(), "nothing may be written before the error"
