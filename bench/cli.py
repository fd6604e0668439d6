"""Start-up time of the `ledger` command: `ledger --help` and `ledger status --help`, wall clock.

A shell user waits for every command; help and completion must feel instant. Each command runs N times
as a fresh process (after one warm-up run that fills the OS page cache); the median is the figure, with
the fastest and slowest beside it, and a bare `python -c pass` as the floor no command can go below.
Target (issue 17): `ledger --help` in at most 0.3 s. Run: `python bench/cli.py [--runs N]`; results go to
bench/results/cli.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results

TARGET_S = 0.3
COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "ledger --help": ["--help"],
    "ledger status --help": ["status", "--help"],
}


def ledger_command() -> list[str]:
    """The installed `ledger` script next to this Python (what a user types), else `python -m ledger`."""
    script = Path(sys.executable).parent / "ledger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ledger"]


def time_runs(argv: list[str], runs: int) -> list[float]:
    """Wall-clock seconds of `runs` fresh processes (after one warm-up run)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    subprocess.run(argv, env=env, capture_output=True, check=True)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        samples.append(time.perf_counter() - started)
    return samples


def measure(runs: int) -> list[dict[str, Any]]:
    rows = []
    for name, args in COMMANDS.items():
        argv = [sys.executable, *args] if name.startswith("python") else [*ledger_command(), *args]
        samples = time_runs(argv, runs)
        rows.append(
            {
                "command": name,
                "runs": runs,
                "median_s": round(statistics.median(samples), 4),
                "min_s": round(min(samples), 4),
                "max_s": round(max(samples), 4),
            }
        )
        print(
            f"{name:<22} median {rows[-1]['median_s']:.3f} s  "
            f"(min {rows[-1]['min_s']:.3f}, max {rows[-1]['max_s']:.3f}, {runs} runs)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per command (default 15)")
    args = parser.parse_args()
    rows = measure(args.runs)
    help_median = next(r["median_s"] for r in rows if r["command"] == "ledger --help")
    met = help_median <= TARGET_S
    print(f"target: ledger --help ≤ {TARGET_S} s: {'met' if met else 'NOT met'}")
    path = write_results("cli", {"commands": rows, "target_s": TARGET_S, "targets_met": met})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
