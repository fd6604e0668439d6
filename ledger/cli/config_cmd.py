"""`ledger config`: the settings in force and where each came from."""

from __future__ import annotations

import argparse
from typing import Any

from ledger.cli.common import EXIT_OK, EXIT_USAGE, error, print_json
from ledger.config import SETTINGS_BY_KEY, Settings


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "config",
        help="print the configuration in force and where each value came from",
        description="Print every setting, its value and its source (flag, environment, config file, "
        "default). Precedence: flags > environment (a LEDGER_ name before the bare one) > "
        "--config/LEDGER_CONFIG file > defaults. Secrets, and passwords or tokens in URLs, show as ***.",
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
    if args.json:
        print_json({key: {"value": value, "source": source} for key, value, source in rows})
        return EXIT_OK
    width = max(len(key) for key, _, _ in rows)
    value_width = min(48, max(len(value) for _, value, _ in rows))
    for key, value, source in rows:
        env = "/".join(SETTINGS_BY_KEY[key].env)
        print(f"{key:<{width}}  {value:<{value_width}}  {source}  [{env}]")
    return EXIT_OK
