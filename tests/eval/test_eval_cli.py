"""`python -m eval` (dynast-eval) on small folders: the table, the JSON line and its provenance,
`ref` statistics reused by `calc`, and every bad input ending in a clear error and exit code 2.

FID here runs the real Inception architecture with deterministic random weights in pytorch-fid's
layout (passed as --inception-weights), so it needs no download and no optional package."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cli import main
from eval.fid import load_stats, save_stats
from eval.images import read_image
from eval.inception import FEATURE_DIM, FIDInceptionV3, preprocess

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "eval", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_set(folder: Path, images: np.ndarray, suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}{suffix}")
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[Path, Path]:
    """16 real 32x32 images (two pyramid levels for SWD) and noisy copies under the same names."""
    root = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-40, 41, real.shape), 0, 255).astype(np.uint8)
    return write_set(root / "real", real), write_set(root / "fake", fake)


@pytest.fixture(scope="module")
def small_sets(sets, tmp_path_factory) -> tuple[Path, Path]:
    """Three images a side: Inception costs about 0.3 s per image on two CPU cores."""
    root = tmp_path_factory.mktemp("small")
    for side, folder in zip(("real", "fake"), sets, strict=True):
        (root / side).mkdir()
        for path in sorted(folder.iterdir())[:3]:
            (root / side / path.name).write_bytes(path.read_bytes())
    return root / "real", root / "fake"


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """Deterministic stand-in weights in pytorch-fid's exact key layout. He-scaled convolutions
    keep the activations near unit size (torch's default init fades them to denormals, which
    would make FID vanish and the CPU crawl)."""
    generator = torch.Generator().manual_seed(0)
    network = FIDInceptionV3()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
    state = dict(network.state_dict())
    state["fc.weight"] = torch.zeros(1008, FEATURE_DIM)
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


def test_calc_swd_and_paired_metrics_prints_a_table_and_appends_json(sets, tmp_path) -> None:
    real, fake = sets
    results = tmp_path / "results.jsonl"
    args = ["calc", "--real", str(real), "--fake", str(fake), "--metrics", "swd,l1,psnr,ssim"]
    proc = run_cli(*args, "--results", str(results), "--batch-size", "5", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    for name in ("swd", "swd @ 32x32", "swd @ 16x16", "l1", "psnr", "ssim"):
        assert name in proc.stdout
    (line,) = results.read_text().splitlines()
    record = json.loads(line)
    metrics = record["metrics"]
    assert set(metrics) == {"swd", "swd_levels", "l1", "psnr", "ssim"}
    assert set(metrics["swd_levels"]) == {"32x32", "16x16"}
    assert np.isclose(metrics["swd"], np.mean(list(metrics["swd_levels"].values())))
    assert 0 < metrics["l1"] < 0.2 and 0 < metrics["ssim"] < 1
    assert record["count"] == 16 and record["size"] == [32, 32] and record["format"] == "png"
    assert record["real"]["kind"] == "folder" and record["real"]["count"] == 16
    assert record["seed"] == 3 and record["implementation"]["swd"]["config"]["seed"] == 3
    assert "environment" in record and record["environment"]["torch"] == torch.__version__
    # The same run again: one more line, identical numbers (seeded, batch-size invariant).
    proc = run_cli(*args, "--results", str(results), "--batch-size", "16", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(x) for x in results.read_text().splitlines())
    assert second["metrics"]["swd"] == pytest.approx(first["metrics"]["swd"], rel=1e-6)
    assert second["metrics"]["psnr"] == pytest.approx(first["metrics"]["psnr"], rel=1e-6)


def test_ref_statistics_are_the_features_and_feed_calc_fid(
    small_sets, inception_weights, tmp_path, capsys
) -> None:
    real, fake = small_sets
    stats = tmp_path / "real_stats.npz"
    weights = ["--inception-weights", str(inception_weights)]
    proc = run_cli("ref", "--images", str(real), "--out", str(stats), *weights)
    assert proc.returncode == 0, proc.stderr
    saved = load_stats(stats)
    assert saved.count == 3 and saved.meta["image_size"] == [32, 32]
    assert saved.meta["weights_source"] == "argument" and len(saved.meta["weights_sha256"]) == 64
    assert saved.meta["standard_weights"] is False

    results = tmp_path / "fid.jsonl"
    proc = run_cli(
        "calc", "--real", str(stats), "--fake", str(fake), "--metrics", "fid",
        "--results", str(results), *weights,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from_stats = json.loads(results.read_text())
    assert from_stats["real"]["kind"] == "stats"
    assert from_stats["weights_sha256"] == saved.meta["weights_sha256"]
    assert from_stats["implementation"]["fid"]["preprocessing"] == saved.meta["preprocessing"]

    fid = from_stats["metrics"]["fid"]
    assert np.isfinite(fid) and fid > 0

    # The statistics are those of the network's features of the real images, computed directly
    # (the distance itself is checked against scipy in test_fid_math.py).
    network = FIDInceptionV3()
    network.load_state_dict(
        {k: v for k, v in torch.load(inception_weights).items() if not k.startswith("fc.")}
    )
    images = torch.stack([read_image(p) for p in sorted(real.iterdir())])
    with torch.no_grad():
        features = network(preprocess(images)).double().numpy()
    np.testing.assert_allclose(saved.mu, features.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(saved.sigma, np.cov(features, rowvar=False), rtol=1e-3, atol=1e-5)

    # Statistics made with other weights, or another preprocessing or size, are refused, naming
    # what differs.
    for change, needle in (
        ({"weights_sha256": "f" * 64}, "weights_sha256"),
        ({"preprocessing": "antialiased resize"}, "preprocessing"),
        ({"image_size": [64, 64]}, "(64, 64)"),
    ):
        other = tmp_path / "other.npz"
        save_stats(other, dataclasses.replace(saved, meta={**saved.meta, **change}))
        capsys.readouterr()
        argv = ["calc", "--real", str(other), "--fake", str(fake), "--metrics", "fid", *weights]
        assert main(argv) == 2
        assert needle in capsys.readouterr().err


def expect_error(capsys, argv: list[str], *needles: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_end_with_a_clear_error(sets, tmp_path, capsys) -> None:
    real, fake = sets
    rng = np.random.default_rng(1)
    fewer = write_set(tmp_path / "fewer", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    larger = write_set(tmp_path / "larger", rng.integers(0, 256, (16, 48, 48, 3), dtype=np.uint8))
    empty = tmp_path / "empty"
    empty.mkdir()
    calc = ["calc", "--real", str(real), "--fake"]
    expect_error(capsys, [*calc, str(fewer), "--metrics", "swd"], "equal image counts", "16", "5")
    expect_error(capsys, [*calc, str(larger), "--metrics", "swd"], "equal image sizes")
    expect_error(capsys, [*calc, str(larger), "--metrics", "l1"], "need equal image sizes")
    expect_error(capsys, [*calc, str(fewer), "--metrics", "psnr"], "pair images by file name")
    expect_error(capsys, [*calc, str(empty)], "no images", str(empty))
    expect_error(capsys, [*calc, str(fake), "--metrics", "fid,lpips"], "unknown", "lpips")

    rgba = rng.integers(0, 256, (16, 32, 32, 4), dtype=np.uint8)
    transparent = write_set(tmp_path / "transparent", rgba)
    expect_error(capsys, [*calc, str(transparent), "--metrics", "l1"], "transparent")

    unreadable = write_set(
        tmp_path / "unreadable", rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    )
    (unreadable / "0001.png").write_bytes(b"not a png")
    expect_error(capsys, [*calc, str(unreadable), "--metrics", "swd"], "0001.png")

    stats = tmp_path / "s.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    expect_error(
        capsys, ["calc", "--real", str(stats), "--fake", str(fake), "--metrics", "fid,swd"],
        "statistics file", "swd",
    )  # fmt: skip
    expect_error(
        capsys, ["calc", "--real", str(stats), "--fake", str(fake), "--metrics", "fid"],
        "not a dynast statistics file",
    )  # fmt: skip
    expect_error(
        capsys, ["ref", "--images", str(empty), "--out", str(tmp_path / "x.npz")], "no images"
    )
    assert not (tmp_path / "x.npz").exists()


def _refused_before_computing(monkeypatch) -> None:
    import eval.cli

    def computes(*args, **kwargs):
        raise AssertionError("a metric was computed before the arguments were checked")

    for name in ("_compute_fid", "_compute_swd", "_compute_paired"):
        monkeypatch.setattr(eval.cli, name, computes)


def test_results_lines_start_on_their_own_line(sets, tmp_path, capsys) -> None:
    real, fake = sets
    results = tmp_path / "results.jsonl"
    results.write_text('{"earlier": 1}')  # its last line lacks the newline
    args = ["calc", "--real", str(real), "--fake", str(fake), "--metrics", "l1"]
    assert main([*args, "--results", str(results)]) == 0
    earlier, record = (json.loads(line) for line in results.read_text().splitlines())
    assert earlier == {"earlier": 1} and "l1" in record["metrics"]


@pytest.mark.parametrize(
    ("results", "needle"),
    [
        ("folder", "is a folder"),
        pytest.param(
            "/dev/full",
            "is not a regular file",
            marks=pytest.mark.skipif(
                not Path("/dev/full").is_char_device(), reason="no /dev/full device"
            ),
        ),
        ("not-json", "not-json.jsonl:2 is not a JSON object"),
        ("seed", "--seed must be an integer >= 0, got -1"),
    ],
)
def test_a_results_file_that_cannot_take_the_line_and_a_negative_seed_fail_first(
    sets, tmp_path, capsys, monkeypatch, results, needle
) -> None:
    real, fake = sets
    args = ["calc", "--real", str(real), "--fake", str(fake), "--metrics", "l1"]
    if results == "folder":
        args += ["--results", str(tmp_path)]
    elif results == "not-json":
        path = tmp_path / "not-json.jsonl"
        path.write_text('{"ok": 1}\nsome notes\n')
        args += ["--results", str(path)]
    elif results == "seed":
        args += ["--seed", "-1"]
    else:
        args += ["--results", results]
    _refused_before_computing(monkeypatch)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynast-eval calc: error: ") and needle in err[0]
    if results == "not-json":
        assert path.read_text() == '{"ok": 1}\nsome notes\n'


def test_a_text_file_named_npz_is_not_an_npz_file(sets, tmp_path, capsys) -> None:
    _, fake = sets
    stats = tmp_path / "stats.npz"
    stats.write_text("mu sigma\n")
    args = ["calc", "--real", str(stats), "--fake", str(fake), "--metrics", "fid"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an npz file (not a zip archive)" in err[0], err
    assert str(stats) in err[0]
