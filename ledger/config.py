"""One frozen settings object, built once from flags, environment, an optional TOML file and defaults.

`SETTINGS` is the one registry: each entry's key, environment names, default, forms and help feed
`load_settings`, `ledger config`, the common flags and the table in docs/configuration.md.

Precedence, highest first: command-line flags, environment variables (a setting's names in order: the
LEDGER_ spelling before the seed's bare one), the TOML file named by `--config` or `LEDGER_CONFIG`, built-in
defaults. Every value remembers where it came from, so `ledger config` can say.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.core.errors import ConfigError, InvalidRequest
from ledger.core.placement import check_labels, parse_labels
from ledger.core.resources import DEFAULT_RATIOS, HOST_ID_FORBIDDEN, ResourceType
from ledger.core.units import BANDWIDTH_FORMS, SIZE_FORMS, UnitError, parse_bandwidth, parse_size

Raw = str | int | float | bool | dict[str, Any]  # a TOML table is a dict


def _ratio(value: Raw) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _number(value: Raw) -> float:
    if isinstance(value, bool | dict):
        raise ValueError("must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):  # TypeError: a TOML list, table or date
        raise ValueError("must be a number") from None
    if not math.isfinite(number):  # "nan" and "inf" parse as floats but are no ratio, fraction or time
        raise ValueError("must be a finite number")
    return number


def _fraction(value: Raw) -> float:
    number = _number(value)
    if not 0 < number <= 1:
        raise ValueError("must be greater than 0 and at most 1")
    return number


def _multiplier(value: Raw) -> float:
    number = _number(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _seconds(value: Raw) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _whole(value: Raw, wrong: str) -> int:
    """`value` as an int when it is a whole number (16, "16", 16.0 from TOML), else ValueError(wrong)."""
    if isinstance(value, bool | dict):
        raise ValueError(wrong)
    try:
        number = int(value)
        whole = number == float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a TOML inf
        raise ValueError(wrong) from None
    if not whole:
        raise ValueError(wrong)
    return number


def _count(value: Raw) -> int:
    number = _whole(value, "must be a whole number")
    if number <= 0:
        raise ValueError("must be a whole number greater than 0")
    return number


EMBEDDED_BUSY_POLL_US = 500  # the default with the embedded NATS server; 0 when joining one
MAX_BUSY_POLL_US = 10_000


def _busy_poll_us(value: Raw) -> int:
    wrong = f"must be a whole number from 0 to {MAX_BUSY_POLL_US}"
    number = _whole(value, wrong)
    if not 0 <= number <= MAX_BUSY_POLL_US:
        raise ValueError(wrong)
    return number


def _port(value: Raw) -> int:
    number = _count(value)
    if number > 65535:
        raise ValueError("must be at most 65535")
    return number


def _size(value: Raw) -> int:
    return _count(value) if isinstance(value, int) else parse_size(str(value))


def _bandwidth(value: Raw) -> int:
    return _count(value) if isinstance(value, int) else parse_bandwidth(str(value))


def _text(value: Raw) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


_NOT_IN_SUBJECT_TOKEN = re.compile(HOST_ID_FORBIDDEN)


def _host_id(value: Raw) -> str:
    text = _text(value)
    if len(text) > 255 or _NOT_IN_SUBJECT_TOKEN.search(text):
        raise ValueError("is not a valid host id")
    return text


def default_host_id() -> str:
    """The short hostname, made safe as a subject token (`web-1.example.com` → `web-1`)."""
    short = socket.gethostname().split(".", 1)[0]
    return _NOT_IN_SUBJECT_TOKEN.sub("-", short)[:255] or "localhost"


def _path(value: Raw) -> Path:
    return Path(_text(value)).expanduser()


def _labels(value: Raw) -> dict[str, str]:
    """`zone=a,rack=r12` (or a TOML table) as host labels."""
    try:
        if isinstance(value, dict):
            return check_labels(value, "host_labels")
        return parse_labels(str(value), "host_labels")
    except InvalidRequest as exc:
        raise ValueError(exc.message.removeprefix("host_labels: ")) from None


MAX_STREAM_REPLICAS = 5  # JetStream's own limit


def _replicas(value: Raw) -> int:
    wrong = f"must be a whole number from 1 to {MAX_STREAM_REPLICAS}"
    number = _whole(value, wrong)
    if not 1 <= number <= MAX_STREAM_REPLICAS:
        raise ValueError(wrong)
    return number


def _listen_addr(value: Raw) -> str | None:
    """`HOST:PORT` to listen on; empty or `off` turns the listener off (None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "off"}):
        return None
    text = _text(value)
    host, colon, port = text.rpartition(":")
    wrong = "must be HOST:PORT (port 0: any free one), e.g. 127.0.0.1:9464, or empty to turn it off"
    if not colon or not host or _whole(port, wrong) not in range(65536):
        raise ValueError(wrong)
    return text


def _days(value: Raw) -> float:
    number = _number(value)
    if number < 0:
        raise ValueError("must be 0 (keep forever) or a number of days greater than 0")
    return number


def _bool(value: Raw) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _log_format(value: Raw) -> str:
    text = _text(value).lower()
    if text not in {"text", "json"}:
        raise ValueError("must be 'text' or 'json'")
    return text


# A scheme that begins a new URL in a comma-separated list (NATS takes several servers).
_NEXT_URL = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")
# Schemes whose lone userinfo is a user name (`postgresql://app@db/x`); anywhere else it may be a token.
_USER_SCHEMES = frozenset({"postgresql", "postgres", "sqlite"})
MASK = "***"


def mask_url(url: str) -> str:
    """`url` (or several, comma-separated) with every password or token replaced by `***`; never raises.

    `postgresql://app:pw@db/x` → `postgresql://app:***@db/x`, `nats://tok@h:4222` → `nats://***@h:4222`: a
    lone userinfo is kept only in a database URL, where it is a user name. Everything from `//` to a URL's
    last `@` counts as userinfo, so a password holding `@`, `/` or `,` unescaped is masked whole.
    """
    return ",".join(_mask_one(part) for part in _NEXT_URL.split(url))


def _mask_one(url: str) -> str:
    at = url.rfind("@")
    if at < 0:
        return url
    slashes = url.find("//")
    if 0 <= slashes < at:
        start = slashes + 2
        scheme = url[:slashes].strip().removesuffix(":").split("+", 1)[0].lower()
    else:
        start = len(url) - len(url.lstrip())
        scheme = ""
    user, colon, _ = url[start:at].partition(":")
    if colon:
        shown = f"{user}:{MASK}"
    elif scheme in _USER_SCHEMES:
        shown = user
    else:
        shown = MASK
    return url[:start] + shown + url[at:]


@dataclass(frozen=True, slots=True)
class Computed:
    """A default worked out at load time from the environment and the settings resolved before it."""

    compute: Callable[[Mapping[str, Any], Mapping[str, str]], Any]
    source: str = "default"


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value: where it may come from, what it accepts, and its default.

    `env` lists the environment names highest first. `default_text` says the default in the docs where the
    value alone would not (a computed default, or what an unset value means). `secret` values are shown as
    `***`; in a `url` setting a password or token is. `cli_flag`: every command accepts `--KEY`.
    """

    key: str
    env: tuple[str, ...]
    parse: Callable[[Raw], Any]
    forms: str
    help: str
    default: Any = None
    default_text: str = ""
    secret: bool = False
    url: bool = False
    cli_flag: bool = False
    empty_is_value: bool = False  # an empty environment variable is a value (e.g. "off"), not "unset"

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def default_doc(self) -> str:
        """The default as the docs write it (Markdown)."""
        if self.default_text:
            return self.default_text
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "`true`" if self.default else "`false`"
        return f"`{self.default}`"

    def safe(self, value: Any) -> Any:
        """`value` as it may be shown: a secret as `***`, a URL with its passwords masked."""
        if value is None:
            return None
        if self.secret:
            return MASK
        if self.url and isinstance(value, str):
            return mask_url(value)
        return value


def _seed_names(name: str) -> tuple[str, ...]:
    """The seed's bare name, after its LEDGER_-prefixed spelling (which wins when both are set)."""
    return ("LEDGER_" + name, name)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """`$XDG_DATA_HOME/ledger`, else `~/.local/share/ledger`."""
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ledger"


def _default_database_url(values: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    return f"sqlite:///{Path(values['data_dir']) / 'ledger.db'}"


_RATIO_FORMS = "a number greater than 0, e.g. 4.0"
_MULTIPLIER_FORMS = "a number of at least 1"
_FILE_FORMS = "a file path"


def _ratio_setting(resource: ResourceType) -> Setting:
    return Setting(
        f"oversub_{resource.value}",
        _seed_names("OVERSUB_" + resource.value.upper()),
        _ratio,
        _RATIO_FORMS,
        f"oversubscription ratio for {resource.value}",
        DEFAULT_RATIOS[resource],
    )


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "data_dir",
        ("LEDGER_DATA_DIR",),
        _path,
        "a directory path",
        "where the embedded database and NATS store live; its filesystem is the disk that is measured",
        Computed(lambda values, environ: default_data_dir(environ)),
        "`$XDG_DATA_HOME/ledger`, else `~/.local/share/ledger`",
        cli_flag=True,
    ),
    Setting(
        "database_url",
        ("LEDGER_DATABASE_URL", "DATABASE_URL"),
        _text,
        "an SQLAlchemy URL: sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST/DB",
        "the ledger database",
        Computed(_default_database_url),
        "`sqlite:///<data_dir>/ledger.db`",
        url=True,
        cli_flag=True,
    ),
    Setting(
        "nats_url",
        ("LEDGER_NATS_URL", "NATS_URL"),
        _text,
        "nats://[USER:PASSWORD@ or TOKEN@]HOST:PORT (several separated by commas)",
        "a NATS server to join",
        default_text="unset (start an embedded NATS server)",
        url=True,
        cli_flag=True,
    ),
    Setting(
        "host_id",
        ("LEDGER_HOST_ID",),
        _host_id,
        "1 to 255 characters without '.', '*', '>' or spaces (it is a NATS subject token)",
        "this host's id",
        Computed(lambda values, environ: default_host_id(), "default (hostname)"),
        "the short hostname (`web-1.example.com` → `web-1`)",
        cli_flag=True,
    ),
    Setting(
        "nats_port",
        ("LEDGER_NATS_PORT",),
        _port,
        "a TCP port from 1 to 65535",
        "port for the embedded NATS server",
        default_text="any free port (written to `serve.json` in the data dir)",
    ),
    *(_ratio_setting(r) for r in ResourceType),
    Setting(
        "cpu_limit", _seed_names("CPU_LIMIT"), _count, "a whole number of vCPUs", "vCPU capacity override"
    ),
    Setting("memory_limit", _seed_names("MEMORY_LIMIT"), _size, SIZE_FORMS, "memory capacity override"),
    Setting(
        "disk_limit", _seed_names("DISK_LIMIT"), _size, SIZE_FORMS, "disk capacity override (else statfs)"
    ),
    Setting(
        "network_limit", _seed_names("NETWORK_LIMIT"), _bandwidth, BANDWIDTH_FORMS, "uplink capacity override"
    ),
    Setting(
        "disk_io_limit",
        _seed_names("DISK_IO_LIMIT"),
        _bandwidth,
        BANDWIDTH_FORMS,
        "disk I/O capacity override",
        default_text="unset (discovery assumes 1 GB/s)",
    ),
    Setting(
        "max_image_storage",
        _seed_names("MAX_IMAGE_STORAGE"),
        _fraction,
        "a fraction greater than 0 and at most 1, e.g. 0.2",
        "share of disk capacity that images plus OCI cache may use",
        0.2,
    ),
    Setting(
        "disk_io_burst_multiplier",
        _seed_names("DISK_IO_BURST_MULTIPLIER"),
        _multiplier,
        _MULTIPLIER_FORMS,
        "disk I/O burst = sustained × this",
        4.0,
    ),
    Setting(
        "default_bandwidth",
        ("LEDGER_DEFAULT_BANDWIDTH",),
        _bool,
        "true or false",
        "charge an instance record or validate request that does not state its network or disk I/O "
        "bandwidth the vCPU-share default for it (false: charge 0)",
        True,
    ),
    Setting(
        "default_bandwidth_uses_ratio",
        ("LEDGER_DEFAULT_BANDWIDTH_USES_RATIO",),
        _bool,
        "true or false",
        "multiply default bandwidths by the oversubscription ratio (the seed's old, double-charging rule)",
        False,
    ),
    Setting(
        "reservation_ttl",
        ("LEDGER_RESERVATION_TTL",),
        _seconds,
        "a number of seconds greater than 0",
        "how long an unconsumed reservation holds its resources",
        60.0,
    ),
    Setting(
        "request_timeout",
        ("LEDGER_REQUEST_TIMEOUT",),
        _seconds,
        "a number of seconds greater than 0",
        "how long a command that asks the service (--nats-url) waits for the answer before it says the "
        "service is unavailable (exit 6)",
        5.0,
    ),
    Setting(
        "busy_poll_us",
        ("LEDGER_BUSY_POLL_US",),
        _busy_poll_us,
        f"a whole number of microseconds from 0 (off) to {MAX_BUSY_POLL_US}",
        "after answering a lone request, `ledger serve` polls for the next one this long before it sleeps "
        "(the embedded NATS server's callers are all on this machine); "
        'see "One after another" in docs/protocol.md',
        default_text=f"`{EMBEDDED_BUSY_POLL_US}` with the embedded NATS server, `0` when joining one",
    ),
    Setting(
        "host_labels",
        ("LEDGER_HOST_LABELS",),
        _labels,
        "NAME=VALUE pairs separated by commas, e.g. zone=a,rack=r12 (in the TOML file also a table)",
        "this host's labels, published with its capacity (`ledger agent`, `ledger serve`, `ledger host "
        "refresh`) and matched by `ledger.v1.candidates` and `place`",
        {},
        "none",
    ),
    Setting(
        "agent_interval",
        ("LEDGER_AGENT_INTERVAL",),
        _seconds,
        "a number of seconds greater than 0",
        "how often `ledger agent` runs discovery again and publishes the host's capacity if it changed",
        60.0,
    ),
    Setting(
        "retention_processed_days",
        ("LEDGER_RETENTION_PROCESSED_DAYS",),
        _days,
        "a number of days (0 keeps them forever)",
        "how long applied event ids are kept for de-duplication once the consumer is past them (an older "
        "redelivery is still stale by its version)",
        7.0,
    ),
    Setting(
        "retention_reservations_days",
        ("LEDGER_RETENTION_RESERVATIONS_DAYS",),
        _days,
        "a number of days (0 keeps them forever)",
        "how long ended reservations (consumed, released, expired) are kept; held ones are never pruned",
        7.0,
    ),
    Setting(
        "retention_history_days",
        ("LEDGER_RETENTION_HISTORY_DAYS",),
        _days,
        "a number of days (0 keeps it forever)",
        "how long allocation history is kept (a product feature: kept forever by default)",
        0.0,
    ),
    Setting(
        "retention_dead_letters_days",
        ("LEDGER_RETENTION_DEAD_LETTERS_DAYS",),
        _days,
        "a number of days (0 keeps them forever)",
        "how long dead letters are kept",
        90.0,
    ),
    Setting(
        "retention_tombstones_days",
        ("LEDGER_RETENTION_TOMBSTONES_DAYS",),
        _days,
        "a number of days (0 keeps them forever)",
        "how long deleted instances, volumes and images are remembered (never less than "
        "retention_processed_days or retention_dead_letters_days, and forever while dead letters are); "
        "a copy of an event about one that arrives after that counts as new",
        90.0,
    ),
    Setting(
        "prune_interval",
        ("LEDGER_PRUNE_INTERVAL",),
        _seconds,
        "a number of seconds greater than 0",
        "how often `ledger serve` prunes what the retention settings let go, in small batches",
        300.0,
    ),
    Setting(
        "sweep_interval",
        ("LEDGER_SWEEP_INTERVAL",),
        _seconds,
        "a number of seconds greater than 0",
        "how often `ledger serve` ends holds past their TTL on hosts nothing else locks, so that fleet "
        "searches (`candidates`, `place`) see their room again",
        1.0,
    ),
    Setting(
        "metrics_addr",
        ("LEDGER_METRICS_ADDR",),
        _listen_addr,
        "HOST:PORT (port 0: any free port, written to `serve.json`), or empty (or `off`) to turn it off",
        "where `ledger serve` and `ledger agent` serve /metrics (Prometheus), /livez, /healthz and /readyz",
        "127.0.0.1:9464",
        empty_is_value=True,
    ),
    Setting(
        "stream_replicas",
        ("LEDGER_STREAM_REPLICAS",),
        _replicas,
        f"a whole number from 1 to {MAX_STREAM_REPLICAS}",
        "replicas of the JetStream streams the ledger creates (3 on a NATS cluster); an existing stream "
        "with another count is updated",
        1,
    ),
    Setting(
        "usage_interval",
        ("LEDGER_USAGE_INTERVAL",),
        _seconds,
        "a number of seconds greater than 0",
        "how often `ledger agent` (and `ledger serve`, see `serve_samples_usage`) samples what each Running "
        "VM really uses: CPU, memory, disk and network",
        10.0,
    ),
    Setting(
        "one_round_trip_admission",
        ("LEDGER_ONE_ROUND_TRIP_ADMISSION",),
        _bool,
        "true or false",
        "on PostgreSQL, admit a group of validates in one statement (the same decision as the plain path; "
        "bench/rpc.py --plain-admission measures what it is worth); false uses the plain path only",
        True,
    ),
    Setting(
        "serve_samples_usage",
        ("LEDGER_SERVE_SAMPLES_USAGE",),
        _bool,
        "true or false",
        "`ledger serve` samples its own host's VMs (the single-host default); set false where a `ledger "
        "agent` runs on that host, or where serve runs away from the VMs",
        True,
    ),
    Setting(
        "retention_usage_days",
        ("LEDGER_RETENTION_USAGE_DAYS",),
        _days,
        "a number of days (0 keeps them forever)",
        "how long hourly usage summaries, and each instance's newest report, are kept",
        14.0,
    ),
    Setting("log_format", ("LEDGER_LOG_FORMAT",), _log_format, "text or json", "log line format", "text"),
    Setting("nats_user", ("LEDGER_NATS_USER",), _text, "a user name", "NATS user"),
    Setting("nats_password", ("LEDGER_NATS_PASSWORD",), _text, "a password", "NATS password", secret=True),
    Setting("nats_token", ("LEDGER_NATS_TOKEN",), _text, "a token", "NATS token", secret=True),
    Setting("nats_nkey_seed", ("LEDGER_NATS_NKEY_SEED",), _path, _FILE_FORMS, "NATS NKey seed file"),
    Setting("nats_creds", ("LEDGER_NATS_CREDS",), _path, _FILE_FORMS, "NATS credentials (.creds) file"),
    Setting("nats_tls_ca", ("LEDGER_NATS_TLS_CA",), _path, _FILE_FORMS, "CA bundle to verify NATS"),
    Setting("nats_tls_cert", ("LEDGER_NATS_TLS_CERT",), _path, _FILE_FORMS, "client certificate for NATS"),
    Setting("nats_tls_key", ("LEDGER_NATS_TLS_KEY",), _path, _FILE_FORMS, "client key for NATS"),
)
SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
CONFIG_FILE_ENV = "LEDGER_CONFIG"
ENV_NAMES: frozenset[str] = frozenset(name for s in SETTINGS for name in s.env) | {CONFIG_FILE_ENV}


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything configurable, resolved; `sources[key]` says where each value came from.

    One field per entry of `SETTINGS`, which holds the defaults: build it with `load_settings`.
    """

    data_dir: Path
    database_url: str
    nats_url: str | None
    host_id: str
    nats_port: int | None
    oversub_cpu: float
    oversub_memory: float
    oversub_disk: float
    oversub_network: float
    oversub_disk_io: float
    cpu_limit: int | None
    memory_limit: int | None
    disk_limit: int | None
    network_limit: int | None
    disk_io_limit: int | None
    max_image_storage: float
    disk_io_burst_multiplier: float
    default_bandwidth: bool
    default_bandwidth_uses_ratio: bool
    reservation_ttl: float
    request_timeout: float
    busy_poll_us: int | None  # None: EMBEDDED_BUSY_POLL_US with the embedded NATS server, else 0
    host_labels: Mapping[str, str]
    agent_interval: float
    retention_processed_days: float
    retention_reservations_days: float
    retention_history_days: float
    retention_dead_letters_days: float
    retention_tombstones_days: float
    prune_interval: float
    sweep_interval: float
    metrics_addr: str | None
    stream_replicas: int
    usage_interval: float
    one_round_trip_admission: bool
    serve_samples_usage: bool
    retention_usage_days: float
    log_format: str
    nats_user: str | None
    nats_password: str | None
    nats_token: str | None
    nats_nkey_seed: Path | None
    nats_creds: Path | None
    nats_tls_ca: Path | None
    nats_tls_cert: Path | None
    nats_tls_key: Path | None
    sources: Mapping[str, str]

    def ratio(self, resource: ResourceType) -> float:
        """The configured oversubscription ratio for `resource`."""
        value: float = getattr(self, f"oversub_{resource.value}")
        return value

    def limit(self, resource: ResourceType) -> int | None:
        """The operator's capacity override for `resource`, if any."""
        value: int | None = getattr(self, f"{resource.value}_limit")
        return value

    def describe(self) -> list[tuple[str, str, str]]:
        """(key, value, source) rows for `ledger config`; secrets and URL passwords are masked."""
        rows = []
        for setting in SETTINGS:
            shown = setting.safe(getattr(self, setting.key))
            rows.append(
                (
                    setting.key,
                    "(unset)" if shown is None else str(shown),
                    self.sources.get(setting.key, "default"),
                )
            )
        return rows

    def __repr__(self) -> str:  # masked like describe(): a repr ends up in logs and tracebacks
        fields = [f"{s.key}={s.safe(getattr(self, s.key))!r}" for s in SETTINGS]
        return f"Settings({', '.join(fields)}, sources={dict(self.sources)!r})"


def _bad(setting: Setting, source: str, raw: Raw, reason: str) -> ConfigError:
    shown = setting.safe(raw)
    return ConfigError(
        f"invalid {setting.key} from {source}: {shown!r} {reason}. Accepted: {setting.forms}.",
        setting=setting.key,
        source=source,
    )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", setting="config") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", setting="config") from None
    section = data["ledger"] if isinstance(data.get("ledger"), dict) else data
    unknown = sorted(set(section) - set(SETTINGS_BY_KEY))
    if unknown:
        known = ", ".join(sorted(SETTINGS_BY_KEY))
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; known settings: {known}",
            setting="config",
        )
    return dict(section)


def load_settings(
    flags: Mapping[str, Raw | None] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Resolve every setting; a bad value raises ConfigError naming the setting, its source and the forms."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = dict(os.environ if environ is None else environ)
    unknown_flags = sorted(set(flags) - set(SETTINGS_BY_KEY))
    if unknown_flags:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown_flags)}", setting=unknown_flags[0])
    file_path = config_file or (Path(env[CONFIG_FILE_ENV]) if env.get(CONFIG_FILE_ENV) else None)
    file_values = _read_file(file_path) if file_path else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw: Raw | None = None
        source = "default"
        if setting.key in flags:
            raw, source = flags[setting.key], f"flag {setting.flag}"
        else:
            for name in setting.env:
                if env.get(name, "").strip() or (name in env and setting.empty_is_value):
                    raw, source = env[name], f"environment {name}"
                    break
            else:
                if setting.key in file_values:
                    raw, source = file_values[setting.key], f"config file {file_path}"
        if raw is not None:
            values[setting.key] = _parse(setting, source, raw)
        elif isinstance(setting.default, Computed):
            values[setting.key] = setting.default.compute(values, env)
            source = setting.default.source
        else:
            values[setting.key] = setting.default
        sources[setting.key] = source
    return Settings(**values, sources=sources)


def _parse(setting: Setting, source: str, raw: Raw) -> Any:
    try:
        return setting.parse(raw)
    except UnitError as exc:  # already quotes the input; some reasons do not list the forms
        message = f"invalid {setting.key} from {source}: {exc}"
        if setting.forms not in message:
            message += f". Accepted: {setting.forms}."
        raise ConfigError(message, setting=setting.key, source=source) from None
    except ValueError as exc:
        raise _bad(setting, source, raw, str(exc)) from None


def settings_table_markdown() -> str:
    """The Settings table of docs/configuration.md (`python -m ledger.config --markdown` prints it)."""
    lines = [
        "| Key | Environment | Flag | Default | Accepted forms | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        meaning = s.help
        if s.secret:
            meaning += f". **Secret:** shown as `{MASK}`."
        if s.url:
            meaning += f". A password or token in the URL is shown as `{MASK}`."
        cells = (
            f"`{s.key}`",
            ", ".join(f"`{name}`" for name in s.env),
            f"`{s.flag}`" if s.cli_flag else "—",
            s.default_doc,
            s.forms,
            meaning,
        )
        lines.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit(
            "usage: python -m ledger.config --markdown  (prints the Settings table of docs/configuration.md)"
        )
    sys.stdout.write(settings_table_markdown())
