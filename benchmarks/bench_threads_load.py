"""Step time of the default training run on an idle CPU and beside busy processes.

    python -m benchmarks.bench_threads_load [--steps 8] [--busy 0,1,1late] [--repeats 1]
        [--settings before,rule,1] [--setting LABEL=VAR=VALUE,VAR=VALUE ...]
        [--csv benchmarks/results/threads_load.csv]

Each setting runs `python -m train.main` (the `synthetic-64` preset, nothing else changed but the
run length, logging every step and no sample or checkpoint before the end) in a fresh temporary
folder, with the setting's environment variables on top of this process's, once for every count
of busy processes in `--busy` (each a Python loop spinning on one core, started before the run
and killed after it; `1late`: one, started once the run has logged its second step). The step
time is the median difference of `time/train_s` between consecutive steps of `metrics.jsonl`,
the first step left out (warm-up), and with a late busy process the steps before it started.
The named settings (`--settings`):

- `rule`: nothing set: the default command as it stands (`train.threads`);
- `before`: `OMP_NUM_THREADS=2`: two threads whatever the load, which is what the default
  command ran with on two cores before its thread count followed the free cores;
- `1`: `OMP_NUM_THREADS=1`, one thread;
- `passive`: `OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE`: two threads that sleep, rather than
  spin, while they wait for each other.

`--setting LABEL=VAR=VALUE,...` adds a run of the default command with those variables.

Rows are printed and appended to the CSV with the CPU model, the core count and the load average
before each run (other users of the machine show there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.measure import append_rows, git_commit
from train.precision import cpu_bf16

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "timestamp", "cpu", "cores", "torch", "commit", "setting", "variables", "busy", "steps",
    "load_before", "threads", "median_step_s", "min_step_s", "max_step_s",
]  # fmt: skip
SPIN = "while True: pass"


@dataclass(frozen=True)
class Setting:
    label: str
    variables: dict[str, str] = field(default_factory=dict)


NAMED = {
    "rule": Setting("rule"),
    "before": Setting("before", {"OMP_NUM_THREADS": "2"}),
    "1": Setting("1", {"OMP_NUM_THREADS": "1"}),
    "passive": Setting("passive", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}),
}


def parse_setting(text: str) -> Setting:
    """`LABEL=VAR=VALUE,VAR=VALUE` -> a Setting; ValueError naming --setting."""
    label, _, assignments = text.partition("=")
    variables = {}
    for item in filter(None, assignments.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ValueError(f"--setting {text!r}: expected LABEL=VAR=VALUE,VAR=VALUE")
        variables[name] = value
    if not label:
        raise ValueError(f"--setting {text!r}: the label is empty")
    return Setting(label, variables)


def step_times(run_dir: Path) -> list[tuple[int, float]]:
    """(step, training time at its end) of every step the run's metrics log holds so far."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    times = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # being written
        if "time/train_s" in record:
            times.append((record["step"], record["time/train_s"]))
    return sorted(times)


def step_seconds(times: list[tuple[int, float]], after: int = 1) -> list[float]:
    """Wall time of every step after step `after`."""
    return [b - a for (_, a), (step, b) in itertools.pairwise(times) if step > after]


def thread_counts(output: str) -> str:
    """The counts of the run's `CPU threads: N ...` lines, in order (`2>1` when it changed)."""
    lines = [line for line in output.splitlines() if line.startswith("CPU threads:")]
    return ">".join(line.removeprefix("CPU threads:").split()[0] for line in lines)


def _spin(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]


def run_once(setting: Setting, busy: str, steps: int) -> dict[str, object]:
    late = busy.endswith("late")
    count = int(busy.removesuffix("late"))
    spinners = [] if late else _spin(count)
    try:
        time.sleep(1.0 if spinners else 0.0)  # let the spinners take their cores
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            args = [
                "--output-dir", str(run_dir), "--max-steps", str(steps),
                "--train.log_every", "1", "--train.sample_every", "100000",
                "--train.checkpoint_every", "100000",
            ]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
            env.update(setting.variables)
            trainer = subprocess.Popen(
                [sys.executable, "-m", "train.main", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            started_at = 1
            if late:
                while trainer.poll() is None and len(step_times(run_dir)) < 2:
                    time.sleep(0.1)
                spinners = _spin(count)
                started_at = step_times(run_dir)[-1][0] + 1 if step_times(run_dir) else 1
            output = trainer.communicate()[0]
            if trainer.returncode != 0:
                raise RuntimeError(f"training failed ({trainer.returncode}):\n{output[-2000:]}")
            times = step_seconds(step_times(run_dir), after=started_at)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return {
        "load_before": round(load, 2),
        "threads": thread_counts(output),
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "max_step_s": max(times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (8)")
    parser.add_argument(
        "--busy", default="0,1,1late", help="busy processes beside each run (0,1,1late)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting and load (1)")
    parser.add_argument(
        "--settings", default="before,rule,1", help=f"of {','.join(NAMED)} (before,rule,1)"
    )
    parser.add_argument("--setting", action="append", help="LABEL=VAR=VALUE,... (repeatable)")
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks/results/threads_load.csv")
    args = parser.parse_args(argv)
    try:
        unknown = [n for n in args.settings.split(",") if n and n not in NAMED]
        if unknown:
            raise ValueError(f"--settings: unknown {unknown}; choose from {','.join(NAMED)}")
        settings = [NAMED[n] for n in args.settings.split(",") if n]
        settings += [parse_setting(t) for t in args.setting or ()]
        busy_counts = args.busy.split(",")
        if not all(b.removesuffix("late").isdigit() for b in busy_counts):
            raise ValueError(f"--busy: expected counts such as 0,1,1late, got {args.busy!r}")
        if args.steps < 4 or args.repeats < 1:
            raise ValueError("--steps must be >= 4 and --repeats >= 1")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    commit = git_commit()
    print(f"{cpu_bf16().model}, {os.cpu_count()} cores; {args.steps} steps per run")
    print(f"{'setting':<10} {'busy':>5} {'load':>5} {'median s':>9} {'min':>6} {'max':>6}  threads")
    rows = []
    # Interleaved (every setting once, then again) so that other users' load hits all alike.
    for _ in range(args.repeats):
        for busy in busy_counts:
            for setting in settings:
                result = run_once(setting, busy, args.steps)
                print(
                    f"{setting.label:<10} {busy:>5} {result['load_before']:>5} "
                    f"{result['median_step_s']:>9.3f} {result['min_step_s']:>6.2f} "
                    f"{result['max_step_s']:>6.2f}  {result['threads']}",
                    flush=True,
                )
                rows.append(
                    {
                        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "cpu": cpu_bf16().model,
                        "cores": os.cpu_count(),
                        "torch": torch.__version__,
                        "commit": commit,
                        "setting": setting.label,
                        "variables": " ".join(f"{k}={v}" for k, v in setting.variables.items()),
                        "busy": busy,
                        "steps": args.steps,
                        **result,
                    }
                )
    append_rows(args.csv, COLUMNS, rows)
    print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
