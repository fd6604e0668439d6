"""`ledger config`: the settings in force and where each came from."""

from __future__ import annotations

import argparse
from typing import Any

from ledger.cli.common import EXIT_OK, EXIT_USAGE, error, print_json
from ledger.cli.ratios import APPLY, RatioDrift, configured_ratios, drifts, this_hosts_status
from ledger.config import SETTINGS_BY_KEY, Settings
from ledger.core.errors import LedgerError


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "config",
        help="print the configuration in force and where each value came from",
        description="Print every setting, its value and its source (flag, environment, config file, "
        "default). Precedence: flags > environment (a LEDGER_ name before the bare one) > "
        "--config/LEDGER_CONFIG file > defaults. Secrets, and passwords or tokens in URLs, show as ***. "
        "An oversubscription ratio set here that differs from the one this host was registered with "
        f"(read from the database or the service, when there is one) shows both: `{APPLY}` applies it.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.add_argument("--get", metavar="KEY", help="print only this setting's value (for scripts)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    rows = settings.describe()
    if args.get is not None:
        values = {key: value for key, value, _ in rows}
        if args.get not in values:
            error(f"unknown setting {args.get!r}; known: {', '.join(values)}")
            return EXIT_USAGE
        print(values[args.get])
        return EXIT_OK
    stored = {drift.key: drift for drift in _drifts(settings)}
    if args.json:
        data: dict[str, dict[str, Any]] = {}
        for key, value, source in rows:
            data[key] = {"value": value, "source": source}
            if key in stored:
                data[key] |= {
                    "stored": str(stored[key].stored),
                    "apply": APPLY,
                    "note": stored[key].describe(),
                }
        print_json(data)
        return EXIT_OK
    width = max(len(key) for key, _, _ in rows)
    value_width = min(48, max(len(value) for _, value, _ in rows))
    for key, value, source in rows:
        env = "/".join(SETTINGS_BY_KEY[key].env)
        line = f"{key:<{width}}  {value:<{value_width}}  {source}  [{env}]"
        if key in stored:
            drift = stored[key]
            line += f"  (host {drift.host} has {drift.stored}: `{APPLY}` applies {drift.configured})"
        print(line)
    return EXIT_OK


def _drifts(settings: Settings) -> list[RatioDrift]:
    """Configured ratios this host does not use yet. Nothing when no ratio is configured, or when the
    ledger cannot be read (no database yet, host not registered, service down): `config` must work then."""
    if not configured_ratios(settings):
        return []
    try:
        return drifts(settings, this_hosts_status(settings))
    except LedgerError:
        return []
