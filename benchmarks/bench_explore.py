"""Size and load time of correspondence explorer pages (`eval.translate --explore`,
`eval.generate --explore`) in headless Chromium.

    python -m benchmarks.bench_explore --page out/explore.html [--page ...] [--repeat 5]

Per page, each of `--repeat` loads in a fresh Chromium profile: `ready` is the time from the
start of navigation to the end of the page's script (parsing, decoding the base64 attention,
building the figures), `script` the script's own part of it, `click` the time to redraw the
highlights for one clicked pixel (the centre of the output). Medians are printed and appended to
a CSV. Needs Chromium and the playwright package (eval.explore_browser).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.measure import append_rows, cell, git_commit
from eval.explore_browser import missing_tools, open_page
from train.precision import cpu_bf16

COLUMNS = [
    "timestamp", "cpu", "commit", "page", "bytes", "repeat", "ready_ms", "script_ms", "click_ms",
]  # fmt: skip


def measure(page: Path, repeat: int) -> dict[str, object]:
    ready, script, click = [], [], []
    for _ in range(repeat):
        with open_page(page) as opened:
            tab = opened.page
            if opened.requests != [opened.url]:
                raise ValueError(f"{page}: the page made requests: {opened.requests}")
            timing = tab.evaluate("[window.explorer.readyMs, window.explorer.scriptMs]")
            if None in timing:
                raise ValueError(f"{page}: no timings in the page: written by an older dynast?")
            ready.append(timing[0])
            script.append(timing[1])
            box = tab.locator("#output").bounding_box()
            tab.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            click.append(tab.evaluate("window.explorer.state.renderMs"))
    return {
        "page": str(page),
        "bytes": page.stat().st_size,
        "repeat": repeat,
        "ready_ms": statistics.median(ready),
        "script_ms": statistics.median(script),
        "click_ms": statistics.median(click),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_explore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", action="append", required=True, help="an explorer page")
    parser.add_argument("--repeat", type=int, default=5, help="loads per page (5)")
    parser.add_argument("--csv", default="benchmarks/results/explore.csv", help="rows appended")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing is not None:
        print(f"bench_explore: error: needs {missing}", file=sys.stderr)
        return 2
    pages = [Path(p) for p in args.page]
    for page in pages:
        if not page.is_file():
            print(f"bench_explore: error: --page {page}: file not found", file=sys.stderr)
            return 2
    if args.repeat < 1:
        print("bench_explore: error: --repeat must be >= 1", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    common = {"timestamp": stamp, "cpu": cpu_bf16().model}
    common["commit"] = git_commit()
    rows = []
    print(f"{'page':<48} {'MB':>6} {'ready ms':>9} {'script ms':>10} {'click ms':>9}")
    for page in pages:
        try:
            row = {**common, **measure(page, args.repeat)}
        except ValueError as error:
            print(f"bench_explore: error: {error}", file=sys.stderr)
            return 2
        rows.append(row)
        print(
            f"{str(page)[-48:]:<48} {row['bytes'] / 1e6:>6.2f} {cell(row['ready_ms'], '9.1f')} "
            f"{cell(row['script_ms'], '10.1f')} {cell(row['click_ms'], '9.1f')}"
        )
    append_rows(Path(args.csv), COLUMNS, rows)
    print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
