"""Test session set-up.

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when `kernels.fused_*` is imported:
set it here, before any test module imports them, so the fused kernels run on Triton's CPU
interpreter on machines without a GPU. A value given on the command line wins.
"""

import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# The suite runs in two pytest-xdist workers (pyproject.toml), one per core of a 2-core CI
# machine: a worker takes one thread unless OMP_NUM_THREADS says otherwise, since two workers
# with two OpenMP threads each would oversubscribe the cores (spinning threads crawl). The
# subprocesses the tests start inherit the setting.
if "PYTEST_XDIST_WORKER" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# DYNAST_TEST_DETERMINISTIC=1 runs the suite under torch.use_deterministic_algorithms(True), one
# of the settings docs/testing.md lists for checking that no test compares rounding noise.
if os.environ.get("DYNAST_TEST_DETERMINISTIC", "0") not in ("", "0"):
    torch.use_deterministic_algorithms(True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (inductor's C++ compilation of the generator, and "
        "a compiled training run: several minutes each on two cores)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Slow tests are opt-in: on a cold inductor cache the two of them take 7-8 minutes of a
    # 2-core machine, more than the rest of the suite together (docs/testing.md). `-m slow`
    # selects them explicitly and runs them too.
    run_slow = config.getoption("--run-slow") or "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def release():
    """The authors' released code folder (benchmarks.release_code); the test is skipped where it
    is not available."""
    from benchmarks.release_code import release_root

    try:
        return release_root()
    except FileNotFoundError as err:
        pytest.skip(f"the authors' released code is not available: {err}")
