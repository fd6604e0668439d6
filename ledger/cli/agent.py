"""`ledger agent`: the per-host process of a fleet (discovery → `host.capacity` on NATS; no database)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ledger.cli.common import settings_from_args
from ledger.cli.serve import run_loop
from ledger.config import Settings
from ledger.core.errors import ConfigError


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "agent",
        help="run on every host of a fleet: publish this host's capacity and labels to NATS (no database)",
        description="Discover this host (as `ledger discover` does) and publish host.capacity with its "
        "ratios and labels (LEDGER_HOST_LABELS) to NATS: at start, when a check every "
        "LEDGER_AGENT_INTERVAL seconds finds it changed, and on SIGHUP, which re-reads the --config file "
        "first. Needs LEDGER_NATS_URL (or a `ledger serve` running on the same data dir); keeps its last "
        "version in <data dir>/agent.json. Retries an unreachable NATS with backoff; SIGTERM exits 0.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="read <ROOT>/proc and <ROOT>/sys (e.g. the host's, mounted into a container)",
    )
    parser.add_argument(
        "--once", action="store_true", help="publish one snapshot and exit (6: NATS unreachable)"
    )
    parser.add_argument("--log-format", choices=["text", "json"], default=None, help="log line format")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    root: Path = args.root
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such directory", setting="root")
    from ledger import logs
    from ledger.agent import publish_once, run_agent

    logs.configure(args.log_format or settings.log_format)
    if args.once:
        return run_loop(publish_once(settings, root))
    return run_loop(run_agent(settings, lambda: settings_from_args(args), root))
