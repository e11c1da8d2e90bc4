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

# DYNAST_TEST_DETERMINISTIC=1 runs the suite under torch.use_deterministic_algorithms(True), one
# of the settings docs/testing.md lists for checking that no test compares rounding noise.
if os.environ.get("DYNAST_TEST_DETERMINISTIC", "0") not in ("", "0"):
    torch.use_deterministic_algorithms(True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
