"""The issue-13 benchmark scripts on the CPU with --tiny: the printed table and the CSV rows of the
profile, the full optimiser step and the generation throughput (smoke runs: the GPU figures come
from benchmarks/device_session.sh)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from benchmarks import (
    bench_generate,
    bench_optimizer_step,
    bench_train_step,
    performance_targets,
    profile_step,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Small ops on a shared machine: more threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_profile_step_tiny(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "profile.csv"
    args = ["--tiny", "--warmup", "0", "--steps", "1", "--top", "5", "--csv", str(out)]
    assert profile_step.main(args) == 0
    printed = capsys.readouterr().out
    assert "config tiny | 16 px | batch 2 | amp none | backend torch | compile False" in printed
    assert "by category:" in printed and "convolution" in printed
    rows = _rows(out)
    assert list(rows[0]) == profile_step.COLUMNS and len(rows) > 5
    times = [float(r["self_ms_per_step"]) for r in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert any(r["kernel"] == "aten::convolution_backward" for r in rows)


def test_kernel_categories() -> None:
    assert profile_step.category("_candidate_fwd_kernel") == "attention"
    assert profile_step.category("cudnn::engines_precompiled::conv2d_fprop") == "convolution"
    assert profile_step.category("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert profile_step.category("triton_per_fused_native_group_norm_0") == "normalisation"
    assert profile_step.category("void at::native::vectorized_elementwise_kernel") == "elementwise"
    assert profile_step.category("reflection_pad2d_backward_out_kernel") == "copy"
    assert profile_step.category("upsample_bilinear2d_out_frame") == "copy"
    assert profile_step.category("something_else") == "other"


def test_optimizer_step_tiny(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, steps = tmp_path / "step.csv", tmp_path / "train_step.csv"
    args = ["--tiny", "--warmup", "1", "--rep", "1", "--csv", str(out), "--step-csv", str(steps)]
    assert bench_optimizer_step.main(args) == 0
    printed = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == bench_optimizer_step.COLUMNS
    assert [r["part"] for r in rows] == list(bench_optimizer_step.PARTS)
    assert all(r["status"] == "ok" and float(r["median_ms"]) > 0 for r in rows), rows
    assert all(r["backend"] == "torch" and r["config"] == "tiny" for r in rows)
    for part in bench_optimizer_step.PARTS:
        assert any(line.startswith(part) for line in printed.splitlines()), part
    # The whole step again, as train_step.csv's full_step row (peak: the resident set on a CPU).
    (full,) = _rows(steps)
    assert list(full) == bench_train_step.COLUMNS
    assert (full["backend"], full["work"], full["config"]) == ("torch", "full_step", "tiny")
    step_row = next(r for r in rows if r["part"] == "step")
    assert full["median_ms"] == step_row["median_ms"] and float(full["peak_mb"]) > 0


def test_generate_tiny(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "generate.csv"
    assert bench_generate.main(["--tiny", "--warmup", "1", "--rep", "1", "--csv", str(out)]) == 0
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["backend"] == "torch" and row["batch"] == "2"
    assert float(row["images_per_s"]) == pytest.approx(2 / (float(row["median_ms"]) / 1e3))
    assert "images/s" in capsys.readouterr().out


def test_bad_arguments_are_named(capsys: pytest.CaptureFixture) -> None:
    assert bench_generate.main(["--tiny", "--backends", "cuda"]) == 2
    assert "--backends" in capsys.readouterr().err
    assert bench_optimizer_step.main(["--tiny", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert bench_optimizer_step.main(["--tiny", "--parts", "step,lunch"]) == 2
    assert "--parts" in capsys.readouterr().err
    assert profile_step.main(["--tiny", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_summary_fills_only_measured_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert performance_targets.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 16 and all("not measured" in line for line in lines)
    assert " met " not in "".join(lines)
    # A GPU-shaped run: the step's rows at 256 px, batch 8, and the full step at 512 px.
    step = tmp_path / "train_step.csv"
    step.write_text(
        "backend,image_size,batch,status,median_ms\n"
        "torch,256,8,ok,480\ntriton,256,8,ok,150\ntriton+compile,256,8,ok,200\n"
    )
    opt = tmp_path / "optimizer_step.csv"
    opt.write_text(
        "backend,image_size,batch,part,status,median_ms,peak_mb\n"
        "triton,512,4,step,ok,900,70000\ntriton,256,8,step,ok,400,1000\n"
    )
    rows = {
        what: (figure, verdict)
        for what, figure, _, verdict in performance_targets.summary(tmp_path)
    }
    assert rows["training step 256 b8, fused vs reference"] == ("3.20x (150.0 / 480.0 ms)", "met")
    assert rows["training step 256 b8, fused+compile vs reference"][1] == "not met"  # 2.4x
    assert rows["full optimiser step 256 b8 (G+D+VGG)"] == ("400.0 ms", "met")
    assert rows["512 px training, batch 4, full step (fused)"][1] == "met"
    assert rows["inner 256x256 candidate fwd"][1] == "not measured"
    assert performance_targets.main([str(tmp_path / "missing")]) == 2
    # With the work column: the full steps against the release's, and neither kind of step
    # taken for the other.
    step.write_text(
        "backend,work,image_size,batch,amp,status,median_ms,peak_mb\n"
        "torch,g_step,256,8,bf16,ok,480,\n"
        "release,full_step,256,8,fp16,ok,1200,50000\n"
        "triton,full_step,256,8,bf16,ok,380,20000\n"
        "torch,full_step,256,8,bf16,ok,450,40000\n"
        "triton+ckpt,full_step,512,4,bf16,ok,700,20000\n"
    )
    rows = {
        what: (figure, verdict)
        for what, figure, _, verdict in performance_targets.summary(tmp_path)
    }
    assert rows["full step 256 b8, dynast fastest vs the release"] == (
        "3.16x (triton bf16 380.0 ms, release fp16 1200.0 ms)",
        "met",
    )
    assert rows["512 px batch 4 full step, activation checkpointing"] == (
        "peak 19.5 GiB, step 700 ms",
        "met",
    )
    assert rows["training step 256 b8, fused vs reference"][1] == "not measured"


def test_summary_rows_against_the_floor_the_release_and_memory(tmp_path: Path) -> None:
    floor = performance_targets.step_floor_ms()
    assert floor is not None and 20 < floor < 200  # the committed step_cost.csv's newest run
    (tmp_path / "train_step.csv").write_text(
        "backend,work,image_size,batch,status,median_ms\n"
        f"triton,g_step,256,8,ok,{3 * floor}\ntriton+compile,g_step,256,8,ok,{1.5 * floor}\n"
    )
    (tmp_path / "optimizer_step.csv").write_text(
        "backend,image_size,batch,part,status,median_ms,peak_mb\ntriton,256,1,step,ok,90,7000\n"
    )
    (tmp_path / "generate.csv").write_text(
        "backend,image_size,batch,amp,status,images_per_s\n"
        "release,256,16,fp16,ok,20\ntriton,256,16,bf16,ok,50\ntorch,256,16,bf16,ok,30\n"
    )
    dense = [
        next(s for s in performance_targets.preset_shapes(p) if s.block == "dense").describe()
        for p in ("deepfashion-256", "deepfashion-512")
    ]
    (tmp_path / "attention.csv").write_text(
        "gpu,shape,impl,pass,status,median_ms,peak_mb\n"
        f"H,{dense[0]},fused,both,ok,2,100\nH,{dense[1]},fused,both,ok,15,410\n"
        f"H,{dense[1]},fused,fwd,ok,3,40\n"
    )
    rows = {
        what: (figure, verdict)
        for what, figure, _, verdict in performance_targets.summary(tmp_path)
    }
    figure, verdict = rows["generator step 256 b8 vs its roofline floor"]
    assert figure.startswith("1.50x (triton+compile") and verdict == "met"
    b1 = rows["256 px training, batch 1, full step (fused)"]
    assert b1 == ("peak 6.8 GiB, step 90 ms", "met")
    assert rows["generation 256 px, dynast fastest vs the release"] == (
        "2.50x (triton bf16 50.0 images/s, release fp16 20.0)",
        "not met",
    )
    figure, verdict = rows["dense fwd+bwd at 4,096 tokens, fused"]
    assert figure.startswith("peak 410 MB, 4.10x the 1,024-token one (10.2x") and verdict == "met"
    # No sparse block timed: not measured.
    assert rows["candidate fwd+bwd vs reference, every scale"][1] == "not measured"
