"""Ahead-of-time compilation of the kernels for real GPUs, on any machine (no GPU needed).

    python -m kernels.aot       # every kernel and config, real model sizes, sm_80 and sm_90
    python -m kernels.aot --arch 90 --defaults-only

Compiles the cases every operator declares in its `aot.py` (`kernels.aot.compile` does the work)
and prints registers, spills and shared memory per case; `--json` also writes the reports. Exit
status 1 when a case fails to compile, exceeds the card's shared memory or, for a default config,
spills.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..candidates.aot import aot_cases as candidate_cases
from ..candidates.aot import tile_aot_cases
from ..dense.aot import aot_cases as dense_cases
from ..files import write_atomically
from ..norm.aot import aot_cases as norm_cases
from .compile import AotCase, compile_all, format_table


def collect_cases(defaults_only: bool = False) -> list[AotCase]:
    """Every operator's cases, dense, candidates (the query-tile forward last), normalisation in
    that order (only the default configs' with `defaults_only`)."""
    cases = [*dense_cases(), *candidate_cases(), *tile_aot_cases(), *norm_cases()]
    return [c for c in cases if c.is_default or not defaults_only]


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m kernels.aot", description=doc)
    parser.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated")
    parser.add_argument("--defaults-only", action="store_true", help="only the default configs")
    parser.add_argument("--workers", type=int, default=None, help="compile processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the reports here")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",") if a]
    reports = compile_all(collect_cases(args.defaults_only), archs, args.workers)
    print(format_table(reports))
    if args.json:
        rows = [asdict(r) | {"spills": r.spills, "fits": r.fits} for r in reports]
        text = json.dumps(rows, indent=1)
        write_atomically(args.json, lambda path: path.write_text(text))
    bad = [r for r in reports if r.error or not r.fits or (r.is_default and r.spills)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
