"""Every fused kernel compiles for sm_80 and sm_90 at the model's real channel sizes; the default
configs (what ships) neither spill nor exceed the card's shared memory.

The default configs are compiled in every run. Every config the autotuner may pick, and the
large-k forwards, are compiled by the `slow` tests (`pytest --run-slow`; about 5 minutes of 2
cores with a cold Triton cache, against 2 for the defaults): a config that fails there costs no
run, since the autotuner reports a failing config and goes on with the others.

The compiler cannot read kernels decorated under TRITON_INTERPRET, which the test session sets, so
the compilation runs in a subprocess with the variable removed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _compile(out: Path, *flags: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.aot", "--arch", "80,90", *flags, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout[-20000:])
    if not out.exists():
        pytest.fail(f"kernels.aot wrote no report (rc {proc.returncode}):\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The default configs of every case, for both architectures."""
    return _compile(tmp_path_factory.mktemp("aot") / "defaults.json", "--defaults-only")


@pytest.fixture(scope="module")
def every_config(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every config of every case, for both architectures."""
    return _compile(tmp_path_factory.mktemp("aot") / "every.json")


def test_every_kernel_family_declares_cases(reports: list[dict]) -> None:
    labels = " ".join(r["label"] for r in reports)
    assert "dense" in labels, "kernels.dense.aot declared no ahead-of-time cases"
    assert "candidate" in labels, "kernels.candidates.aot declared no ahead-of-time cases"
    assert "norm_fwd" in labels and "norm_bwd" in labels, "kernels.norm.aot declared no cases"
    assert {r["arch"] for r in reports} == {80, 90}


def _errors(reports: list[dict]) -> list[str]:
    return [f"{r['label']} sm_{r['arch']}: {r['error']}" for r in reports if r["error"]]


def _over_shared_memory(reports: list[dict]) -> list[str]:
    return [
        f"{r['label']} sm_{r['arch']}: {r['shared']} B > {r['shared_limit']} B"
        for r in reports
        if not r["error"] and not r["fits"]
    ]


def test_default_configs_compile_and_fit_shared_memory(reports: list[dict]) -> None:
    assert all(r["is_default"] for r in reports)
    assert not _errors(reports), "\n".join(_errors(reports))
    assert not _over_shared_memory(reports), "\n".join(_over_shared_memory(reports))


@pytest.mark.slow
def test_every_config_compiles_and_fits_shared_memory(every_config: list[dict]) -> None:
    assert not _errors(every_config), "\n".join(_errors(every_config))
    assert not _over_shared_memory(every_config), "\n".join(_over_shared_memory(every_config))


def test_default_configs_do_not_spill(reports: list[dict]) -> None:
    spills = [
        f"{r['label']} sm_{r['arch']}: {r['registers']} registers, stack {r['stack']} B"
        for r in reports
        if r["is_default"] and r["spills"]
    ]
    assert not spills, "\n".join(spills)


@pytest.mark.slow
def test_large_k_forward_is_reported(every_config: list[dict]) -> None:
    """k = 8, 16 and 32 (up to `TOPK_MAX`) compile at the model's dense size; their registers and
    spills are in the report (docs/kernels-dense.md), not held to the defaults' no-spill rule."""
    large = [r for r in every_config if "dense_fwd" in r["label"] and " k=" in r["label"]]
    assert {r["label"].split(" k=")[1].split()[0] for r in large} == {"8", "16", "32"}
    assert not [r for r in large if r["error"]]
    assert all(r["fits"] for r in large)


def test_query_tile_forward_is_reported(reports: list[dict]) -> None:
    """The query-tile candidate forward (`kernels.candidates.aot.tile_aot_cases`) compiles for
    inner- and inter-scale candidates on both architectures (its defaults are held to the no-spill
    rule above)."""
    tile = [r for r in reports if r["label"].startswith("candidate_fwd_tile ")]
    kinds = {(r["label"].split()[1], r["arch"]) for r in tile if r["is_default"]}
    assert kinds == {(kind, arch) for kind in ("inner", "inter") for arch in (80, 90)}
