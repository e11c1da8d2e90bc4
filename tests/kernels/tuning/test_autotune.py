"""The autotuning script: search-space listing without a GPU, the refusal to tune without one, the
sweep with an injected timer, and the tuning file's round trip through `kernels.tuning.table`."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from kernels.runtime import interpreting
from kernels.shapes import AttentionShape, preset_shapes
from kernels.tuning import autotune
from kernels.tuning import table as tuning
from kernels.tuning.autotune import Job, plan_jobs, record, sweep
from kernels.tuning.table import TunableKernel, shape_key, tuned_config

ROOT = Path(__file__).resolve().parents[3]
CPU = torch.device("cpu")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "kernels.autotune", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def fake_kernel(times: dict[int, float], broken: tuple[int, ...] = ()) -> TunableKernel:
    """A kernel whose runner returns its config's BLOCK; the fake timer maps that to a time. A
    BLOCK listed in `broken` fails to build, as a config over the shared-memory limit would."""

    def make_runner(dims, config, device, dtype):
        if config["BLOCK"] in broken:
            raise RuntimeError("out of resource: shared memory, required: 300000\nmore text")
        return lambda: config["BLOCK"]

    return TunableKernel(
        name="fake_fwd",
        space=lambda dims: [{"BLOCK": b, "num_warps": 4} for b in sorted(times) if b != 32],
        default=lambda dims: {"BLOCK": 32, "num_warps": 4},
        make_runner=make_runner,
    )


def fake_timer(times: dict[int, float]):
    calls = []

    def timer(runner):
        block = runner()
        calls.append(block)
        return times[block]

    timer.calls = calls
    return timer


DIMS = {"Nq": 4096, "Cqk": 80, "Cp": 16, "Cv": 64, "Cw": 3, "M": 20, "G": 1}


def test_sweep_times_every_config_and_the_default_and_picks_the_fastest() -> None:
    times = {16: 3.0, 32: 2.0, 64: 0.5, 128: 1.0}
    timer = fake_timer(times)
    result = sweep(
        Job(fake_kernel(times), DIMS, ("x",)), device=CPU, dtype=torch.float32, timer=timer
    )
    assert sorted(timer.calls) == [16, 32, 64, 128]  # the default (32) is outside the space
    assert result.winner.config == {"BLOCK": 64, "num_warps": 4}
    assert result.winner.ms == 0.5
    assert result.default_ms == 2.0
    table = autotune.format_results([result])
    assert "4.00x" in table  # default 2.0 ms / winner 0.5 ms


def test_a_failing_config_is_reported_and_the_sweep_goes_on() -> None:
    times = {16: 3.0, 32: 2.0, 64: 0.5, 128: 1.0}
    kernel = fake_kernel(times, broken=(64,))
    result = sweep(
        Job(kernel, DIMS, ("x",)), device=CPU, dtype=torch.float32, timer=fake_timer(times)
    )
    failed = [t for t in result.trials if t.ms is None]
    assert [t.config["BLOCK"] for t in failed] == [64]
    assert "out of resource" in failed[0].error and "more text" not in failed[0].error
    assert result.winner.config["BLOCK"] == 128
    assert "failed: RuntimeError: out of resource" in autotune.format_results([result])


def test_nothing_is_recorded_when_every_config_fails(tmp_path: Path) -> None:
    times = {16: 1.0, 32: 1.0}
    kernel = fake_kernel(times, broken=(16, 32))
    result = sweep(
        Job(kernel, DIMS, ("x",)), device=CPU, dtype=torch.float32, timer=fake_timer(times)
    )
    assert result.winner is None
    assert not record(result, tmp_path / "table.json", CPU)
    assert not (tmp_path / "table.json").exists()
    assert "no config ran" in autotune.format_results([result])


def test_winner_round_trips_through_the_tuning_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tuning" / "table.json"
    monkeypatch.setenv(tuning.TUNING_FILE_ENV, str(path))
    times = {16: 3.0, 32: 2.0, 64: 0.5}
    kernel = fake_kernel(times)
    assert tuned_config(kernel, DIMS, CPU) == {"BLOCK": 32, "num_warps": 4}  # no file: default
    result = sweep(
        Job(kernel, DIMS, ("x",)), device=CPU, dtype=torch.float32, timer=fake_timer(times)
    )
    assert record(result, path, CPU, torch.float32)
    table = json.loads(path.read_text())
    entry = table["cpu"][tuning.triton_version()]["fp32"]["fake_fwd"][shape_key(DIMS)]
    assert entry == {"config": {"BLOCK": 64, "num_warps": 4}, "ms": 0.5}
    nearby = dict(DIMS, Nq=3000, Cqk=96)  # same power-of-two buckets
    assert tuned_config(kernel, nearby, CPU, torch.float32) == {"BLOCK": 64, "num_warps": 4}
    elsewhere = dict(DIMS, Nq=16384)
    assert tuned_config(kernel, elsewhere, CPU, torch.float32) == {"BLOCK": 32, "num_warps": 4}
    # Timed in fp32: a bf16 problem (or a launcher that names no dtype) keeps the default.
    assert tuned_config(kernel, DIMS, CPU, torch.bfloat16) == {"BLOCK": 32, "num_warps": 4}
    assert tuned_config(kernel, DIMS, CPU) == {"BLOCK": 32, "num_warps": 4}


def test_an_fp32_lookup_never_gets_a_bf16_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "table.json"
    monkeypatch.setenv(tuning.TUNING_FILE_ENV, str(path))
    kernel = fake_kernel({16: 1.0})
    tuning.record_winner(path, CPU, "fake_fwd", DIMS, {"BLOCK": 128, "num_warps": 8}, 1.0)
    assert tuned_config(kernel, DIMS, CPU, torch.bfloat16) == {"BLOCK": 128, "num_warps": 8}
    assert tuned_config(kernel, DIMS, CPU, torch.float32) == {"BLOCK": 32, "num_warps": 4}
    assert tuned_config(kernel, DIMS, CPU, torch.float16) == {"BLOCK": 32, "num_warps": 4}
    fp16 = {"BLOCK": 64, "num_warps": 2}
    tuning.record_winner(path, CPU, "fake_fwd", DIMS, fp16, 2.0, torch.float16)
    assert tuned_config(kernel, DIMS, CPU, torch.float16) == fp16
    assert tuned_config(kernel, DIMS, CPU, torch.bfloat16)["BLOCK"] == 128
    with pytest.raises(ValueError, match="dtype must be one of"):
        tuned_config(kernel, DIMS, CPU, torch.float64)


def test_a_table_without_the_dtype_level_reads_as_bf16_and_moves_there_on_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files the autotuner wrote before the dtype level (GPU -> Triton -> kernel -> key)."""
    path = tmp_path / "old.json"
    monkeypatch.setenv(tuning.TUNING_FILE_ENV, str(path))
    version = tuning.triton_version()
    old = {"config": {"BLOCK": 16, "num_warps": 2}, "ms": 3.0}
    path.write_text(json.dumps({"cpu": {version: {"fake_fwd": {shape_key(DIMS): old}}}}))
    kernel = fake_kernel({16: 1.0})
    assert tuned_config(kernel, DIMS, CPU, torch.bfloat16) == old["config"]
    assert tuned_config(kernel, DIMS, CPU) == old["config"]
    assert tuned_config(kernel, DIMS, CPU, torch.float32) == {"BLOCK": 32, "num_warps": 4}
    other = dict(DIMS, Nq=16384)
    tuning.record_winner(path, CPU, "fake_fwd", other, {"BLOCK": 64, "num_warps": 4}, 1.0)
    slot = json.loads(path.read_text())["cpu"][version]
    assert set(slot) == {"bf16"}  # the legacy entries moved, none lost
    assert set(slot["bf16"]["fake_fwd"]) == {shape_key(DIMS), shape_key(other)}
    assert tuned_config(kernel, DIMS, CPU, torch.bfloat16) == old["config"]


def test_readers_see_every_write_of_a_busy_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes land within one tick of the file system's clock: the reader's cache must notice."""
    path = tmp_path / "table.json"
    monkeypatch.setenv(tuning.TUNING_FILE_ENV, str(path))
    kernel = fake_kernel({16: 1.0})
    for block in (16, 32, 64, 128, 256):
        tuning.record_winner(path, CPU, "fake_fwd", DIMS, {"BLOCK": block, "num_warps": 4}, 1.0)
        assert tuned_config(kernel, DIMS, CPU)["BLOCK"] == block


def test_concurrent_writers_lose_nothing_and_readers_never_see_half_a_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "table.json"
    kernel = fake_kernel({16: 1.0})
    n_writers, per_writer = 3, 25
    failures: list[str] = []
    done = threading.Event()

    def write(w: int) -> None:
        for i in range(per_writer):
            dims = dict(DIMS, Nq=2 ** (i % 20), Cv=2**w)
            trial = autotune.Trial({"BLOCK": i, "num_warps": 4}, float(i))
            job = Job(kernel, dims, ("x",))
            record(autotune.SweepResult(job, trial.config, (trial,)), path, CPU)

    def read() -> None:
        reads = 0
        while not done.is_set() or reads == 0:
            if path.exists():
                try:
                    json.loads(path.read_text())
                    reads += 1
                except json.JSONDecodeError as err:
                    failures.append(str(err))

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(w,)) for w in range(n_writers)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert not failures
    entries = json.loads(path.read_text())["cpu"][tuning.triton_version()]["bf16"]["fake_fwd"]
    assert len(entries) == n_writers * 20  # 20 distinct Nq buckets per writer
    assert not list(tmp_path.glob("*.tmp"))


def test_blocks_in_one_bucket_share_one_job() -> None:
    kernel = fake_kernel({16: 1.0})
    a = AttentionShape("inner", 64, 64, cqk=80, cp=16, cv=64)
    b = AttentionShape("inner", 60, 60, cqk=72, cp=16, cv=60)
    c = AttentionShape("inter", 64, 64, cqk=80, cp=16, cv=64)
    jobs = plan_jobs([("a", a), ("b", b), ("c", c)], lambda block: [kernel])
    assert [job.shapes for job in jobs] == [("a", "b"), ("c",)]
    assert plan_jobs([("a", a)], lambda block: [kernel], only={"other"}) == []


def test_without_a_gpu_it_refuses_to_tune(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert autotune.main(["--preset", "tiny"]) != 0
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "--dry-run" in err


def test_a_bad_shape_is_named(capsys: pytest.CaptureFixture) -> None:
    assert autotune.main(["--dry-run", "--shape", "inner:H=64,Cqk=80"]) == 2
    assert "inner:H=64,Cqk=80" in capsys.readouterr().err


def tunable_names(block: str) -> list[str]:
    return [kernel.name for kernel in autotune.KERNELS[block]]


def test_dry_run_lists_the_space_of_every_kernel_for_a_preset() -> None:
    proc = run_cli("--dry-run", "--preset", "deepfashion-256")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    names = tunable_names("dense") + tunable_names("inner")
    for name in names:
        assert f"\n{name}  [" in "\n" + out, f"{name} missing from the dry run"
    for shape in preset_shapes("deepfashion-256"):
        assert f"deepfashion-256/{shape.label}" in out
    assert "num_warps=" in out and "* = default config" in out


def test_dry_run_takes_explicit_shapes() -> None:
    proc = run_cli(
        "--dry-run",
        "--shape",
        "inner:H=48,W=40,Cqk=80,Cp=16,Cv=64",
        "--shape",
        "dense:H=6,W=10,Cqk=48,Cp=12,Cv=40,k=3",
    )
    assert proc.returncode == 0, proc.stderr
    sparse = AttentionShape("inner", 48, 40, cqk=80, cp=16, cv=64)
    dense = AttentionShape("dense", 6, 10, cqk=48, cp=12, cv=40, k=3)
    assert f"key {shape_key(sparse.dims(8))}" in proc.stdout
    assert f"key {shape_key(dense.dims(8))}" in proc.stdout
    assert f"key {shape_key(dense.dims(8, backward=True))}" in proc.stdout
    for name in tunable_names("inner") + tunable_names("dense"):
        assert f"{name}  [shape/" in proc.stdout


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(AttentionShape("dense", 4, 6, cqk=24, cp=8, cv=20, k=2), id="dense"),
        pytest.param(AttentionShape("inter", 4, 6, cqk=24, cp=8, cv=20, k=2), id="inter"),
        pytest.param(AttentionShape("inner", 4, 6, cqk=24, cp=8, cv=20, k=2), id="inner"),
    ],
)
def test_winners_are_recorded_under_the_keys_the_kernels_look_up(
    shape: AttentionShape, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The autotuner keys a block by `shape.dims(batch)`; the launchers build their own dims at
    run time. Spy on the launchers' table lookup (which the CPU interpreter normally skips) and
    check that they ask for exactly those keys."""
    on_interpreter = interpreting()
    if not on_interpreter and not torch.cuda.is_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by conftest on CPU machines)")
    import kernels
    from kernels.dense import fused as dense_fused
    from kernels.shapes import make_problem

    asked: list[tuple[str, dict]] = []
    dtypes: set[torch.dtype] = set()

    def spy(kernel, dims, device, dtype):
        asked.append((kernel.name, dict(dims)))
        dtypes.add(dtype)
        return kernel.default(dims)

    # Where every launcher looks its config up.
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    monkeypatch.setattr(tuning, "tuned_config", spy)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = 2
    p = make_problem(shape, batch, device=device, requires_grad=True)
    op = kernels.dynamic_attention if shape.block == "dense" else kernels.candidate_attention
    result = op(*p.positional(), **p.keywords(), backend="triton")
    (result.out.sum() + result.conf.sum() + result.warp.sum()).backward()
    if shape.block == "dense":  # the other backward strategy looks up its own two kernels
        monkeypatch.setenv(dense_fused.BACKWARD_ENV, "streamed")
        result = op(*p.positional(), **p.keywords(), backend="triton")
        (result.out.sum() + result.conf.sum() + result.warp.sum()).backward()
    names = {name for name, _ in asked}
    assert names == set(tunable_names(shape.block))  # forward and every backward kernel looked up
    assert dtypes == {p.positional()[0].dtype}  # winners of the problem's own dtype
    for name, dims in asked:
        kernel = next(k for k in autotune.KERNELS[shape.block] if k.name == name)
        assert dims == shape.dims(batch, backward=autotune.is_backward(kernel)), name


def test_shipped_table_names_real_kernels_and_parameters() -> None:
    """The table shipped with the package (winners measured on real GPUs) must name kernels that
    exist, with the launch parameters their defaults have: a renamed kernel or parameter would
    otherwise be silently ignored, or crash the launch."""
    from kernels.candidates import aot as aot_candidates
    from kernels.candidates import tuning as tuning_candidates
    from kernels.dense import aot as aot_dense
    from kernels.dense import tuning as tuning_dense
    from kernels.tuning.table import DTYPE_NAMES, SHIPPED_TABLE, load_table

    kernels = {k.name: k for k in (*tuning_dense.TUNABLE, *tuning_candidates.TUNABLE)}
    samples = {
        **dict.fromkeys((k.name for k in tuning_dense.TUNABLE), aot_dense.AOT_DIMS[0]),
        **dict.fromkeys(
            (k.name for k in tuning_candidates.TUNABLE), aot_candidates.tuning_dims()[0]
        ),
    }
    table = load_table(SHIPPED_TABLE)
    assert table, f"{SHIPPED_TABLE} is empty or missing"
    for gpu, versions in table.items():
        for version, by_dtype in versions.items():
            assert set(by_dtype) <= set(DTYPE_NAMES.values()), f"{gpu}/{version}: no dtype level"
            for dtype, by_kernel in by_dtype.items():
                for name, entries in by_kernel.items():
                    where = f"{gpu}/{version}/{dtype}"
                    assert name in kernels, f"{where}: unknown kernel {name}"
                    want = set(kernels[name].default(samples[name]))
                    for key, entry in entries.items():
                        assert set(entry["config"]) == want, f"{where}/{name}/{key}"
