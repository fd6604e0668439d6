"""Settings: precedence, every environment name, defaults, and start-up errors that say what to fix."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.config import (
    CONFIG_FILE_ENV,
    ENV_NAMES,
    SETTINGS,
    SETTINGS_BY_KEY,
    Computed,
    Settings,
    default_data_dir,
    load_settings,
    mask_url,
)
from ledger.core.errors import ConfigError
from ledger.core.resources import ResourceType
from ledger.core.units import BANDWIDTH_FORMS, SIZE_FORMS

GIB = 2**30


def load(tmp_path: Path, environ: dict[str, str] | None = None, **kwargs: object) -> Settings:
    """Settings from exactly `environ` (never the real environment), with data in `tmp_path`."""
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    env.update(environ or {})
    return load_settings(environ=env, **kwargs)  # type: ignore[arg-type]


def write_toml(tmp_path: Path, text: str, name: str = "ledger.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ defaults


def test_default_oversubscription_ratios_are_the_seeds(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.oversub_cpu == 4.0
    assert settings.oversub_memory == 1.0
    assert settings.oversub_disk == 1.0
    assert settings.oversub_network == 2.0
    assert settings.oversub_disk_io == 2.0
    assert settings.ratio(ResourceType.CPU) == 4.0
    assert settings.ratio(ResourceType.DISK_IO) == 2.0


def test_default_image_burst_and_reservation_settings(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.max_image_storage == 0.2
    assert settings.disk_io_burst_multiplier == 4.0
    assert settings.reservation_ttl == 60.0
    assert settings.log_format == "text"
    assert settings.busy_poll_us is None  # `ledger serve` picks: polls with the embedded NATS only


def test_default_bandwidth_is_charged_without_the_ratio_by_default(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.default_bandwidth is True
    assert settings.default_bandwidth_uses_ratio is False


def test_default_bandwidth_can_be_turned_off(tmp_path: Path) -> None:
    assert load(tmp_path, {"LEDGER_DEFAULT_BANDWIDTH": "false"}).default_bandwidth is False


def test_capacity_overrides_are_unset_by_default(tmp_path: Path) -> None:
    settings = load(tmp_path)
    for resource in ResourceType:
        assert settings.limit(resource) is None
    assert settings.nats_url is None
    assert settings.nats_password is None


def test_every_value_comes_from_default_when_nothing_is_given(tmp_path: Path) -> None:
    settings = load(tmp_path)
    for setting in SETTINGS:
        expected = "default (hostname)" if setting.key == "host_id" else "default"
        assert settings.sources[setting.key] == expected, setting.key


def test_data_dir_defaults_under_xdg_data_home(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.data_dir == tmp_path / "xdg" / "ledger"
    assert settings.database_url == f"sqlite:///{tmp_path / 'xdg' / 'ledger' / 'ledger.db'}"


def test_default_data_dir_without_xdg_is_under_the_home_directory() -> None:
    assert default_data_dir({}) == Path.home() / ".local" / "share" / "ledger"


def test_database_url_follows_a_configured_data_dir(tmp_path: Path) -> None:
    settings = load(tmp_path, {"LEDGER_DATA_DIR": str(tmp_path / "d")})
    assert settings.data_dir == tmp_path / "d"
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'ledger.db'}"
    assert settings.sources["database_url"] == "default"


def test_host_id_defaults_to_the_hostname(tmp_path: Path) -> None:
    import socket

    settings = load(tmp_path)
    assert settings.host_id == socket.gethostname()
    assert settings.sources["host_id"] == "default (hostname)"


# ---------------------------------------------------------------------------------------- precedence


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'host_id = "from-file"\nnats_url = "nats://file:4222"\noversub_cpu = 3.0\n')
    settings = load(
        tmp_path,
        {"LEDGER_HOST_ID": "from-env", "LEDGER_NATS_URL": "nats://env:4222"},
        flags={"host_id": "from-flag"},
        config_file=config,
    )
    assert settings.host_id == "from-flag"
    assert settings.sources["host_id"] == "flag --host-id"
    assert settings.nats_url == "nats://env:4222"
    assert settings.sources["nats_url"] == "environment LEDGER_NATS_URL"
    assert settings.oversub_cpu == 3.0
    assert settings.sources["oversub_cpu"] == f"config file {config}"
    assert settings.oversub_memory == 1.0
    assert settings.sources["oversub_memory"] == "default"


def test_config_file_named_by_ledger_config_is_read(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "oversub_network = 1.5\n")
    settings = load(tmp_path, {CONFIG_FILE_ENV: str(config)})
    assert settings.oversub_network == 1.5
    assert settings.sources["oversub_network"] == f"config file {config}"


def test_config_file_argument_beats_ledger_config(tmp_path: Path) -> None:
    from_env = write_toml(tmp_path, "oversub_cpu = 2.0\n", "env.toml")
    from_arg = write_toml(tmp_path, "oversub_cpu = 8.0\n", "arg.toml")
    settings = load(tmp_path, {CONFIG_FILE_ENV: str(from_env)}, config_file=from_arg)
    assert settings.oversub_cpu == 8.0
    assert settings.sources["oversub_cpu"] == f"config file {from_arg}"


def test_config_file_may_use_a_ledger_table(tmp_path: Path) -> None:
    config = write_toml(tmp_path, '[ledger]\noversub_cpu = 6\ndisk_limit = "500GB"\n')
    settings = load(tmp_path, config_file=config)
    assert settings.oversub_cpu == 6.0
    assert settings.disk_limit == 500 * 10**9


def test_environment_beats_config_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "oversub_cpu = 3.0\n")
    settings = load(tmp_path, {"OVERSUB_CPU": "5"}, config_file=config)
    assert settings.oversub_cpu == 5.0
    assert settings.sources["oversub_cpu"] == "environment OVERSUB_CPU"


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "oversub_cpu = 3.0\n")
    settings = load(tmp_path, {"OVERSUB_CPU": "  "}, config_file=config)
    assert settings.oversub_cpu == 3.0


@pytest.mark.parametrize("off", ["", "  ", "off", "OFF"])
def test_an_empty_metrics_address_turns_the_listener_off(tmp_path: Path, off: str) -> None:
    assert load(tmp_path).metrics_addr == "127.0.0.1:9464"
    settings = load(tmp_path, {"LEDGER_METRICS_ADDR": off})
    assert settings.metrics_addr is None
    assert settings.sources["metrics_addr"] == "environment LEDGER_METRICS_ADDR"
    assert load(tmp_path, config_file=write_toml(tmp_path, 'metrics_addr = ""\n')).metrics_addr is None
    assert load(tmp_path, {"LEDGER_METRICS_ADDR": "0.0.0.0:9100"}).metrics_addr == "0.0.0.0:9100"


def test_flag_none_lets_lower_sources_show_through(tmp_path: Path) -> None:
    settings = load(tmp_path, {"LEDGER_HOST_ID": "env-host"}, flags={"host_id": None, "data_dir": None})
    assert settings.host_id == "env-host"
    assert settings.sources["host_id"] == "environment LEDGER_HOST_ID"


def test_flags_for_every_common_setting_name_their_flag(tmp_path: Path) -> None:
    flags = {
        "data_dir": str(tmp_path / "data"),
        "database_url": "postgresql://u@h/db",
        "nats_url": "nats://x:4222",
        "host_id": "h1",
    }
    settings = load(tmp_path, flags=flags)
    assert settings.data_dir == tmp_path / "data"
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.nats_url == "nats://x:4222"
    assert settings.host_id == "h1"
    assert settings.sources["data_dir"] == "flag --data-dir"
    assert settings.sources["database_url"] == "flag --database-url"


def test_unknown_flag_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        load(tmp_path, flags={"oversub_gpu": 2})


def test_ledger_prefixed_name_beats_the_seeds_bare_name(tmp_path: Path) -> None:
    settings = load(tmp_path, {"OVERSUB_CPU": "8", "LEDGER_OVERSUB_CPU": "6"})
    assert settings.oversub_cpu == 6.0
    assert settings.sources["oversub_cpu"] == "environment LEDGER_OVERSUB_CPU"


def test_bad_bare_name_is_not_read_when_the_ledger_name_is_set(tmp_path: Path) -> None:
    settings = load(tmp_path, {"DISK_LIMIT": "10 potatoes", "LEDGER_DISK_LIMIT": "1TB"})
    assert settings.disk_limit == 10**12


def test_empty_ledger_name_lets_the_bare_name_show_through(tmp_path: Path) -> None:
    settings = load(tmp_path, {"LEDGER_OVERSUB_CPU": " ", "OVERSUB_CPU": "8"})
    assert settings.oversub_cpu == 8.0
    assert settings.sources["oversub_cpu"] == "environment OVERSUB_CPU"


def test_bare_seed_name_still_beats_the_config_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "oversub_cpu = 3.0\n")
    settings = load(tmp_path, {"OVERSUB_CPU": "5"}, config_file=config)
    assert settings.sources["oversub_cpu"] == "environment OVERSUB_CPU"


@pytest.mark.parametrize(("key", "name"), [("database_url", "DATABASE_URL"), ("nats_url", "NATS_URL")])
def test_the_generic_url_names_are_the_lowest_environment_names(tmp_path: Path, key: str, name: str) -> None:
    ledger_name = "LEDGER_" + name
    assert SETTINGS_BY_KEY[key].env == (ledger_name, name)
    generic = load(tmp_path, {name: "postgresql://generic@db/x"})
    assert getattr(generic, key) == "postgresql://generic@db/x"
    assert generic.sources[key] == f"environment {name}"
    both = load(tmp_path, {name: "postgresql://generic@db/x", ledger_name: "postgresql://ours@db/x"})
    assert getattr(both, key) == "postgresql://ours@db/x"
    assert both.sources[key] == f"environment {ledger_name}"


def test_generic_url_name_beats_the_config_file_but_not_a_flag(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'nats_url = "nats://file:4222"\n')
    from_env = load(tmp_path, {"NATS_URL": "nats://env:4222"}, config_file=config)
    assert from_env.nats_url == "nats://env:4222"
    from_flag = load(tmp_path, {"NATS_URL": "nats://env:4222"}, flags={"nats_url": "nats://flag:4222"})
    assert from_flag.sources["nats_url"] == "flag --nats-url"


def test_real_environment_is_used_when_environ_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OVERSUB_CPU", "7")
    settings = load_settings()
    assert settings.oversub_cpu == 7.0
    assert settings.sources["oversub_cpu"] == "environment OVERSUB_CPU"


# --------------------------------------------------------------------------------- environment names


@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("OVERSUB_CPU", "8", "oversub_cpu", 8.0),
        ("OVERSUB_MEMORY", "1.5", "oversub_memory", 1.5),
        ("OVERSUB_DISK", "1.2", "oversub_disk", 1.2),
        ("OVERSUB_NETWORK", "3", "oversub_network", 3.0),
        ("OVERSUB_DISK_IO", "2.5", "oversub_disk_io", 2.5),
        ("CPU_LIMIT", "16", "cpu_limit", 16),
        ("MEMORY_LIMIT", "64GiB", "memory_limit", 64 * GIB),
        ("DISK_LIMIT", "500GB", "disk_limit", 500 * 10**9),
        ("NETWORK_LIMIT", "10Gbps", "network_limit", 1_250_000_000),
        ("DISK_IO_LIMIT", "1GB/s", "disk_io_limit", 10**9),
        ("MAX_IMAGE_STORAGE", "0.5", "max_image_storage", 0.5),
        ("DISK_IO_BURST_MULTIPLIER", "1", "disk_io_burst_multiplier", 1.0),
        ("LEDGER_OVERSUB_CPU", "8", "oversub_cpu", 8.0),
        ("LEDGER_OVERSUB_MEMORY", "1.5", "oversub_memory", 1.5),
        ("LEDGER_OVERSUB_DISK", "1.2", "oversub_disk", 1.2),
        ("LEDGER_OVERSUB_NETWORK", "3", "oversub_network", 3.0),
        ("LEDGER_OVERSUB_DISK_IO", "2.5", "oversub_disk_io", 2.5),
        ("LEDGER_CPU_LIMIT", "16", "cpu_limit", 16),
        ("LEDGER_MEMORY_LIMIT", "64GiB", "memory_limit", 64 * GIB),
        ("LEDGER_DISK_LIMIT", "500GB", "disk_limit", 500 * 10**9),
        ("LEDGER_NETWORK_LIMIT", "10Gbps", "network_limit", 1_250_000_000),
        ("LEDGER_DISK_IO_LIMIT", "1GB/s", "disk_io_limit", 10**9),
        ("LEDGER_MAX_IMAGE_STORAGE", "0.5", "max_image_storage", 0.5),
        ("LEDGER_DISK_IO_BURST_MULTIPLIER", "1", "disk_io_burst_multiplier", 1.0),
        ("LEDGER_DEFAULT_BANDWIDTH", "no", "default_bandwidth", False),
        ("LEDGER_DEFAULT_BANDWIDTH_USES_RATIO", "true", "default_bandwidth_uses_ratio", True),
        ("LEDGER_RESERVATION_TTL", "30", "reservation_ttl", 30.0),
        ("LEDGER_BUSY_POLL_US", "0", "busy_poll_us", 0),
        ("LEDGER_BUSY_POLL_US", "10000", "busy_poll_us", 10_000),
        ("LEDGER_LOG_FORMAT", "JSON", "log_format", "json"),
        ("LEDGER_HOST_ID", " node-7 ", "host_id", "node-7"),
        ("LEDGER_NATS_URL", "nats://a:4222,nats://b:4222", "nats_url", "nats://a:4222,nats://b:4222"),
        ("NATS_URL", "nats://a:4222", "nats_url", "nats://a:4222"),
        ("LEDGER_DATABASE_URL", "sqlite:////tmp/x.db", "database_url", "sqlite:////tmp/x.db"),
        ("DATABASE_URL", "sqlite:////tmp/x.db", "database_url", "sqlite:////tmp/x.db"),
        ("LEDGER_NATS_USER", "alice", "nats_user", "alice"),
        ("LEDGER_NATS_PASSWORD", "s3cret", "nats_password", "s3cret"),
        ("LEDGER_NATS_TOKEN", "tok", "nats_token", "tok"),
        ("LEDGER_NATS_NKEY_SEED", "/etc/nkey", "nats_nkey_seed", Path("/etc/nkey")),
        ("LEDGER_NATS_CREDS", "/etc/x.creds", "nats_creds", Path("/etc/x.creds")),
        ("LEDGER_NATS_TLS_CA", "/etc/ca.pem", "nats_tls_ca", Path("/etc/ca.pem")),
        ("LEDGER_NATS_TLS_CERT", "/etc/c.pem", "nats_tls_cert", Path("/etc/c.pem")),
        ("LEDGER_NATS_TLS_KEY", "/etc/k.pem", "nats_tls_key", Path("/etc/k.pem")),
    ],
)
def test_every_environment_name_sets_its_setting(
    tmp_path: Path, name: str, value: str, key: str, expected: object
) -> None:
    settings = load(tmp_path, {name: value})
    assert getattr(settings, key) == expected
    assert settings.sources[key] == f"environment {name}"


def test_the_registry_keys_are_exactly_the_settings_fields_in_order() -> None:
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert fields == [s.key for s in SETTINGS] + ["sources"]


def test_settings_restates_no_default_of_the_registry() -> None:
    for f in dataclasses.fields(Settings):
        assert f.default is dataclasses.MISSING, f.name
        assert f.default_factory is dataclasses.MISSING, f.name


def test_every_default_in_the_registry_has_its_fields_type() -> None:
    hints = typing.get_type_hints(Settings)
    for setting in SETTINGS:
        if not isinstance(setting.default, Computed):
            hint = hints[setting.key]
            expected = typing.get_origin(hint) if isinstance(hint, typing.GenericAlias) else hint
            assert isinstance(setting.default, expected or hint), setting.key


def test_every_setting_has_an_environment_name_forms_and_help() -> None:
    for setting in SETTINGS:
        assert setting.env, setting.key
        assert setting.forms, setting.key
        assert setting.help, setting.key
    assert len(ENV_NAMES) == sum(len(s.env) for s in SETTINGS) + 1


SEED_NAMES = (
    "OVERSUB_CPU",
    "OVERSUB_MEMORY",
    "OVERSUB_DISK",
    "OVERSUB_NETWORK",
    "OVERSUB_DISK_IO",
    "CPU_LIMIT",
    "MEMORY_LIMIT",
    "DISK_LIMIT",
    "NETWORK_LIMIT",
    "DISK_IO_LIMIT",
    "MAX_IMAGE_STORAGE",
    "DISK_IO_BURST_MULTIPLIER",
)


def test_every_seed_name_has_a_ledger_name_that_comes_first() -> None:
    with_bare_names = {s.env[-1]: s.env for s in SETTINGS if not s.env[-1].startswith("LEDGER_")}
    assert with_bare_names.keys() == {*SEED_NAMES, "DATABASE_URL", "NATS_URL"}
    for name in SEED_NAMES:
        assert with_bare_names[name] == ("LEDGER_" + name, name)


def test_removed_burst_multipliers_are_not_settings() -> None:
    assert "upload_burst_multiplier" not in SETTINGS_BY_KEY
    assert "download_burst_multiplier" not in SETTINGS_BY_KEY
    assert not {"UPLOAD_BURST_MULTIPLIER", "DOWNLOAD_BURST_MULTIPLIER"} & ENV_NAMES


def test_a_removed_burst_multiplier_in_the_config_file_is_an_unknown_setting(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "upload_burst_multiplier = 2\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*upload_burst_multiplier"):
        load(tmp_path, config_file=config)


def test_limit_returns_the_capacity_override_per_resource(tmp_path: Path) -> None:
    settings = load(tmp_path, {"CPU_LIMIT": "8", "NETWORK_LIMIT": "1Gbps"})
    assert settings.limit(ResourceType.CPU) == 8
    assert settings.limit(ResourceType.NETWORK) == 125_000_000
    assert settings.limit(ResourceType.DISK) is None


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("yes", True), ("ON", True), ("off", False)])
def test_booleans_accept_the_usual_spellings(tmp_path: Path, raw: str, expected: bool) -> None:
    settings = load(tmp_path, {"LEDGER_DEFAULT_BANDWIDTH_USES_RATIO": raw})
    assert settings.default_bandwidth_uses_ratio is expected


def test_toml_values_of_native_types_are_accepted(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        'cpu_limit = 32\nmemory_limit = 17179869184\ndisk_limit = "2TB"\nnetwork_limit = "25Gbps"\n'
        "default_bandwidth_uses_ratio = true\nreservation_ttl = 90\nmax_image_storage = 0.25\n"
        "default_bandwidth = false\n",
    )
    settings = load(tmp_path, config_file=config)
    assert settings.cpu_limit == 32
    assert settings.memory_limit == 16 * GIB
    assert settings.disk_limit == 2 * 10**12
    assert settings.network_limit == 3_125_000_000
    assert settings.default_bandwidth_uses_ratio is True
    assert settings.reservation_ttl == 90.0
    assert settings.max_image_storage == 0.25
    assert settings.default_bandwidth is False


# ---------------------------------------------------------------------------------------- bad values


def assert_names_setting_source_and_forms(exc: ConfigError, key: str, source: str) -> None:
    message = str(exc)
    assert key in message
    assert source in message
    assert SETTINGS_BY_KEY[key].forms in message
    assert exc.details["setting"] == key
    assert exc.details["source"] == source


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("OVERSUB_CPU", "-1", "oversub_cpu"),
        ("OVERSUB_CPU", "0", "oversub_cpu"),
        ("OVERSUB_MEMORY", "lots", "oversub_memory"),
        ("OVERSUB_NETWORK", "nan", "oversub_network"),
        ("OVERSUB_DISK_IO", "inf", "oversub_disk_io"),
        ("MAX_IMAGE_STORAGE", "2", "max_image_storage"),
        ("MAX_IMAGE_STORAGE", "0", "max_image_storage"),
        ("DISK_IO_BURST_MULTIPLIER", "0.5", "disk_io_burst_multiplier"),
        ("LEDGER_DISK_IO_BURST_MULTIPLIER", "nan", "disk_io_burst_multiplier"),
        ("LEDGER_OVERSUB_CPU", "-1", "oversub_cpu"),
        ("LEDGER_DISK_LIMIT", "10 potatoes", "disk_limit"),
        ("CPU_LIMIT", "0", "cpu_limit"),
        ("CPU_LIMIT", "4.5", "cpu_limit"),
        ("CPU_LIMIT", "four", "cpu_limit"),
        ("DISK_LIMIT", "10 potatoes", "disk_limit"),
        ("DISK_LIMIT", "-5GB", "disk_limit"),
        ("MEMORY_LIMIT", "99999999999PB", "memory_limit"),
        ("NETWORK_LIMIT", "10 potatoes", "network_limit"),
        ("NETWORK_LIMIT", "10MBps", "network_limit"),
        ("DISK_IO_LIMIT", "1G", "disk_io_limit"),
        ("LEDGER_DEFAULT_BANDWIDTH", "sometimes", "default_bandwidth"),
        ("LEDGER_DEFAULT_BANDWIDTH_USES_RATIO", "maybe", "default_bandwidth_uses_ratio"),
        ("LEDGER_RESERVATION_TTL", "-3", "reservation_ttl"),
        ("LEDGER_BUSY_POLL_US", "-1", "busy_poll_us"),
        ("LEDGER_BUSY_POLL_US", "10001", "busy_poll_us"),
        ("LEDGER_BUSY_POLL_US", "2.5", "busy_poll_us"),
        ("LEDGER_BUSY_POLL_US", "fast", "busy_poll_us"),
        ("LEDGER_LOG_FORMAT", "xml", "log_format"),
        ("LEDGER_METRICS_ADDR", "9464", "metrics_addr"),
        ("LEDGER_METRICS_ADDR", "127.0.0.1:99999", "metrics_addr"),
        ("LEDGER_METRICS_ADDR", "127.0.0.1:-1", "metrics_addr"),
        ("LEDGER_STREAM_REPLICAS", "0", "stream_replicas"),
        ("LEDGER_STREAM_REPLICAS", "7", "stream_replicas"),
        ("LEDGER_USAGE_INTERVAL", "0", "usage_interval"),
    ],
)
def test_bad_environment_value_names_setting_source_and_accepted_forms(
    tmp_path: Path, name: str, value: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {name: value})
    assert_names_setting_source_and_forms(caught.value, key, f"environment {name}")
    assert repr(value) in str(caught.value)
    assert caught.value.code == "invalid_config"


def test_negative_ratio_message_reads_plainly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"OVERSUB_CPU": "-1"})
    assert str(caught.value) == (
        "invalid oversub_cpu from environment OVERSUB_CPU: '-1' must be greater than 0. "
        "Accepted: a number greater than 0, e.g. 4.0."
    )


def test_garbage_size_message_quotes_the_input_and_lists_the_forms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"DISK_LIMIT": "10 potatoes"})
    message = str(caught.value)
    assert "'10 potatoes'" in message
    assert message.count(SIZE_FORMS) == 1


def test_bad_bandwidth_message_lists_the_forms_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"NETWORK_LIMIT": "-10Gbps"})
    assert str(caught.value).count(BANDWIDTH_FORMS) == 1


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("oversub_cpu = -2.0", "oversub_cpu"),
        ("oversub_cpu = true", "oversub_cpu"),
        ('oversub_cpu = "x"', "oversub_cpu"),
        ("oversub_cpu = [1, 2]", "oversub_cpu"),
        ("oversub_cpu = nan", "oversub_cpu"),
        ("max_image_storage = 2", "max_image_storage"),
        ("cpu_limit = 4.5", "cpu_limit"),
        ("cpu_limit = true", "cpu_limit"),
        ("cpu_limit = inf", "cpu_limit"),
        ("cpu_limit = [4]", "cpu_limit"),
        ("cpu_limit = 1979-05-27", "cpu_limit"),
        ("disk_limit = -1", "disk_limit"),
        ("disk_limit = 1.5", "disk_limit"),
        ("disk_limit = true", "disk_limit"),
        ('disk_limit = "10 potatoes"', "disk_limit"),
        ("network_limit = 0", "network_limit"),
        ("host_id = 5", "host_id"),
        ('host_id = "  "', "host_id"),
        ("data_dir = 7", "data_dir"),
        ("default_bandwidth = 3", "default_bandwidth"),
        ("default_bandwidth_uses_ratio = 2", "default_bandwidth_uses_ratio"),
        ("reservation_ttl = 0", "reservation_ttl"),
        ("busy_poll_us = true", "busy_poll_us"),
        ("busy_poll_us = inf", "busy_poll_us"),
    ],
)
def test_bad_config_file_value_names_setting_file_and_accepted_forms(
    tmp_path: Path, toml: str, key: str
) -> None:
    config = write_toml(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, config_file=config)
    assert_names_setting_source_and_forms(caught.value, key, f"config file {config}")


def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags={"host_id": "   "})
    assert_names_setting_source_and_forms(caught.value, "host_id", "flag --host-id")


def test_bad_value_in_a_lower_source_is_ignored_when_a_higher_one_wins(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "oversub_cpu = -2.0\n")
    settings = load(tmp_path, {"OVERSUB_CPU": "4"}, config_file=config)
    assert settings.oversub_cpu == 4.0


# ----------------------------------------------------------------------------------------- the file


def test_unknown_key_in_config_file_is_rejected_listing_the_known_ones(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "oversub_cpu = 2\noversub_gpu = 3\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, config_file=config)
    message = str(caught.value)
    assert "oversub_gpu" in message
    assert str(config) in message
    assert "known settings:" in message
    assert "oversub_cpu" in message


def test_unknown_key_in_the_ledger_table_is_rejected(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "[ledger]\nOVERSUB_CPU = 2\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*OVERSUB_CPU"):
        load(tmp_path, config_file=config)


def test_a_non_table_ledger_key_is_an_unknown_setting(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "ledger = 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*ledger"):
        load(tmp_path, config_file=config)


def test_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load(tmp_path, config_file=missing)
    assert str(missing) in str(caught.value)


def test_missing_config_file_from_ledger_config_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path, {CONFIG_FILE_ENV: str(missing)})


def test_unparseable_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "oversub_cpu = = 2\n")
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load(tmp_path, config_file=config)
    assert str(config) in str(caught.value)


def test_config_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'host_id = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path, config_file=config)


def test_config_file_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path, config_file=tmp_path)


def test_empty_config_file_changes_nothing(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "")
    assert load(tmp_path, config_file=config).oversub_cpu == 4.0


# -------------------------------------------------------------------------------------------- secrets


def test_describe_masks_secrets_and_shows_sources(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        {"LEDGER_NATS_PASSWORD": "hunter2", "LEDGER_NATS_TOKEN": "t0ken", "LEDGER_NATS_USER": "bob"},
    )
    rows = {key: (value, source) for key, value, source in settings.describe()}
    assert rows["nats_password"] == ("***", "environment LEDGER_NATS_PASSWORD")
    assert rows["nats_token"] == ("***", "environment LEDGER_NATS_TOKEN")
    assert rows["nats_user"] == ("bob", "environment LEDGER_NATS_USER")
    assert "hunter2" not in repr(settings.describe())
    assert "t0ken" not in repr(settings.describe())


def test_describe_masks_passwords_and_tokens_inside_url_settings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        {
            "LEDGER_DATABASE_URL": "postgresql://app:hunter2@db/ledger",
            "LEDGER_NATS_URL": "nats://user:pw0rd@h1:4222,nats://t0ken@h2:4222",
        },
    )
    shown = {key: value for key, value, _ in settings.describe()}
    assert shown["database_url"] == "postgresql://app:***@db/ledger"
    assert shown["nats_url"] == "nats://user:***@h1:4222,nats://***@h2:4222"
    assert settings.database_url == "postgresql://app:hunter2@db/ledger"  # the value itself is intact


def test_repr_of_settings_does_not_leak_secrets(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        {
            "LEDGER_NATS_PASSWORD": "hunter2",
            "LEDGER_NATS_TOKEN": "t0ken",
            "DATABASE_URL": "postgresql://app:s3cret@db/ledger",
            "NATS_URL": "nats://user:pw0rd@h1:4222,nats://tok3n@h2:4222",
        },
    )
    for text in (repr(settings), str(settings)):
        for secret in ("hunter2", "t0ken", "s3cret", "pw0rd", "tok3n"):
            assert secret not in text
    assert "database_url='postgresql://app:***@db/ledger'" in repr(settings)
    assert "oversub_cpu=4.0" in repr(settings)


def test_bad_secret_value_is_not_quoted_in_the_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "nats_token = 123456789\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, config_file=config)
    assert "123456789" not in str(caught.value)
    assert_names_setting_source_and_forms(caught.value, "nats_token", f"config file {config}")


def test_describe_shows_unset_values_and_every_setting(tmp_path: Path) -> None:
    rows = load(tmp_path).describe()
    assert [key for key, _, _ in rows] == [s.key for s in SETTINGS]
    shown = {key: value for key, value, _ in rows}
    assert shown["nats_password"] == "(unset)"
    assert shown["cpu_limit"] == "(unset)"
    assert shown["oversub_cpu"] == "4.0"
    assert shown["default_bandwidth"] == "True"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.oversub_cpu = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:pw@db/ledger", "postgresql://app:***@db/ledger"),
        (
            "postgresql+psycopg://app:pw@db:5432/x?sslmode=require",
            "postgresql+psycopg://app:***@db:5432/x?sslmode=require",
        ),
        ("postgresql://app@db/ledger", "postgresql://app@db/ledger"),
        ("postgresql://db/ledger", "postgresql://db/ledger"),
        ("sqlite:////var/lib/ledger/ledger.db", "sqlite:////var/lib/ledger/ledger.db"),
        ("nats://user:pw@h1:4222", "nats://user:***@h1:4222"),
        ("nats://tok@h2:4222", "nats://***@h2:4222"),
        ("tls://tok@h2:4222", "tls://***@h2:4222"),
        ("nats://h1:4222", "nats://h1:4222"),
        ("nats://user:pw@h1:4222,nats://tok@h2:4222", "nats://user:***@h1:4222,nats://***@h2:4222"),
        ("nats://a:4222, nats://tok@b:4222", "nats://a:4222, nats://***@b:4222"),
        ("postgresql://app:p@ss/w,rd@db/ledger", "postgresql://app:***@db/ledger"),
        ("postgresql://app:pw@h1:5432,h2:5432/ledger", "postgresql://app:***@h1:5432,h2:5432/ledger"),
        ("user:pw@host:4222", "user:***@host:4222"),
        ("tok@host:4222", "***@host:4222"),
        ("weird://[::1:pw@host", "weird://[:***@host"),
        ("//tok@host", "//***@host"),
        ("", ""),
        ("@", "***@"),
    ],
)
def test_mask_url_masks_passwords_and_tokens(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@given(st.text())
def test_mask_url_never_raises(url: str) -> None:
    assert isinstance(mask_url(url), str)


_USERINFO = st.text(st.characters(exclude_characters="@:,", codec="utf-8"), min_size=1)
_PASSWORD = st.text(st.characters(codec="utf-8"), min_size=1).filter(lambda s: "://" not in s)


@given(
    scheme=st.sampled_from(["postgresql", "postgresql+psycopg", "nats", "tls"]),
    user=_USERINFO,
    password=_PASSWORD,
)
def test_mask_url_hides_any_password(scheme: str, user: str, password: str) -> None:
    url = f"{scheme}://{user}:{password}@db.example:5432/ledger"
    assert mask_url(url) == f"{scheme}://{user}:***@db.example:5432/ledger"


@given(token=st.text(st.characters(exclude_characters=":", codec="utf-8"), min_size=1))
def test_mask_url_hides_any_nats_token(token: str) -> None:
    assert mask_url(f"nats://{token}@h2:4222") == "nats://***@h2:4222"
