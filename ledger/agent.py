"""`ledger agent`: the process on every host of a fleet. It has NATS and no database: it runs discovery (the
code `ledger discover` runs) and publishes `host.capacity` with the host's ratios and labels at start, when a
check every `agent_interval` finds the snapshot changed, and on SIGHUP, which re-reads the configuration
(the environment of a running process is fixed, so a changed limit comes from the `--config` file).

Versions. The ledger ignores a `host.capacity` whose version is not above the one it holds for the host, so
versions must rise across restarts. Each snapshot takes `max(last + 1, milliseconds since the epoch)`, and
`last` is saved in `<data_dir>/agent.json` (atomically, before the event can reach the stream): the file
keeps versions rising when the clock is set back, the clock keeps them rising when the data dir is lost
(today's ≈ 1.7e12 is far below the contract's 2⁶³ − 1). One data dir per agent.

NATS. The agent connects without nats-py's own reconnect loop (it would log every attempt) and retries with
exponential backoff, 0.5 s doubling to 30 s, logging one line when NATS goes down and one when it is back.
A snapshot that could not be published waits, with its event id and version, and goes out once NATS is
back (unless a newer one replaced it). SIGTERM or SIGINT lets a publish in flight finish, then exits 0.

Usage. Every `usage_interval` the agent asks the ledger (`ledger.v1.running_instances`, over NATS) which
of this host's instances are Running, samples them and publishes the report on `ledger.usage.<host>`
(docs/usage.md); a round without NATS or without an answer is skipped with one log line.

Metrics and health (docs/metrics.md) on LEDGER_METRICS_ADDR: publishes, discoveries, NATS connected, a
snapshot waiting, the newest usage sample; /readyz is ready while the agent is connected to NATS with
JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from ledger.bus.connect import connect
from ledger.bus.jetstream import ensure_stream, stream_config
from ledger.bus.publisher import publish_event
from ledger.client import LedgerClient
from ledger.config import Settings, mask_url
from ledger.core.errors import ConfigError, LedgerError, Unavailable
from ledger.core.resources import ResourceType
from ledger.core.results import InstanceUtilizationInfo
from ledger.discovery import discover
from ledger.events import make_event
from ledger.observe.agent import AgentMetrics
from ledger.observe.health import Readiness
from ledger.observe.observer import Observer
from ledger.observe.registry import new_registry
from ledger.observe.usage import SampledUsage
from ledger.serve import running_nats_url
from ledger.usage.reporting import SamplingLoop
from ledger.usage.sampler import Sampler

log = logging.getLogger("ledger.agent")

EVENT_TYPE = "host.capacity"
STATE_FILE = "agent.json"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# A dropped connection is noticed when it closes (nats-py's own reconnect is off); look this often.
LIVENESS_S = 1.0
# One quick retry of a publish, then the backoff takes over (and a closed connection counts as NATS down),
# so a SIGTERM never waits long for a publish to a NATS that went away.
PUBLISH_RETRIES = 1
PUBLISH_TIMEOUT_S = 3.0
_RETRYING = f"retrying with backoff from {BACKOFF_FIRST_S} s up to {BACKOFF_MAX_S:.0f} s"
# What a SIGHUP cannot change in a running agent: where it publishes, as which host, where its state is.
FIXED_ON_RELOAD = (
    "data_dir",
    "host_id",
    "nats_url",
    "nats_user",
    "nats_password",
    "nats_token",
    "nats_nkey_seed",
    "nats_creds",
    "nats_tls_ca",
    "nats_tls_cert",
    "nats_tls_key",
    "log_format",
    "metrics_addr",
)

Loader = Callable[[], Settings]


def capacity_record(settings: Settings, root: Path) -> dict[str, Any]:
    """This host's `host.capacity` data: discovery under `root`, the configured ratios, the labels."""
    record = discover(settings, root=root).to_dict()
    record["ratios"] = {r.value: settings.ratio(r) for r in ResourceType}
    record["labels"] = dict(settings.host_labels)
    return record


def nats_url_for(settings: Settings) -> str:
    """LEDGER_NATS_URL, else the NATS of a `ledger serve` running on this data dir."""
    url = settings.nats_url or running_nats_url(settings)
    if not url:
        raise ConfigError(
            "ledger agent publishes to NATS and none is configured: set LEDGER_NATS_URL (or --nats-url) to "
            f"the fleet's NATS (no ledger serve is running on the data dir {settings.data_dir})",
            setting="nats_url",
        )
    return url


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


class Versions:
    """`host.capacity` versions that only go up, across restarts: max(last + 1, now in ms), `last` on disk."""

    def __init__(self, path: Path, last: int, now_ms: Callable[[], int] = _epoch_ms) -> None:
        self.path = path
        self.last = last
        self._now_ms = now_ms

    @classmethod
    def open(cls, data_dir: Path, now_ms: Callable[[], int] = _epoch_ms) -> Versions:
        """The versions kept in `<data_dir>/agent.json`; ConfigError when the data dir cannot hold them."""
        path = data_dir / STATE_FILE
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            last = _read_last(path)
            versions = cls(path, last, now_ms)
            versions.save(last)  # find out now, not at the first publish, that the file cannot be written
        except OSError as exc:
            raise ConfigError(
                f"ledger agent keeps its last published version in {path} and cannot write it "
                f"({exc.strerror or exc}): set LEDGER_DATA_DIR to a writable directory",
                setting="data_dir",
            ) from None
        return versions

    def next(self) -> int:
        """A version above every one handed out before; saved before it is returned."""
        version = max(self.last + 1, self._now_ms())
        self.last = version
        try:
            self.save(version)
        except OSError as exc:  # the clock still keeps the next run's versions above this one
            log.warning("cannot save the last version to %s: %s", self.path, exc.strerror or exc)
        return version

    def save(self, version: int) -> None:
        """Write the file atomically: a crash leaves the old version or the new one, never half of one."""
        fd, temporary = tempfile.mkstemp(prefix=".agent-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"version": version}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def _read_last(path: Path) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    try:
        version = json.loads(text)["version"]
        if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
            return version
    except (ValueError, TypeError, KeyError):
        pass
    log.warning("ignoring %s: it holds no version; versions continue from the clock", path)
    return 0


class Agent:
    """Discovery → `host.capacity` on NATS, for as long as it runs (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        load: Loader,
        root: Path,
        versions: Versions,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.url = nats_url_for(settings)
        self._load = load
        self._root = root
        self._versions = versions
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._down_since: float | None = None  # when NATS was first found unreachable (None: not down)
        self._attempts = 0  # failed connection attempts since then
        self._retry_at = 0.0  # no connection attempt or publish before this (loop time)
        self._publish_failing = False  # connected, but the last publish was not acknowledged
        self._latest: dict[str, Any] | None = None  # the record of the newest snapshot queued
        self._pending: dict[str, Any] | None = None  # its envelope, until it is published
        self._reason = ""
        self._wake = asyncio.Event()
        self._stopping = False
        self._reloading = False
        observer = observer or Observer(new_registry(), Readiness(), None)
        self._metrics = AgentMetrics(
            observer.registry,
            connected=lambda: self._js is not None,
            waiting=lambda: self._pending is not None,
        )
        observer.readiness.add("nats", self._nats_health)
        observer.readiness.add("agent", lambda: "stopping" if self._stopping else None)
        self.sampling = SamplingLoop(
            self._jetstream, Sampler(settings.host_id), self._running_instances, settings.usage_interval
        )
        observer.registry.register(SampledUsage(lambda: self.sampling.last_report))

    # ---- running ------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Publish at start, on change and on SIGHUP until SIGTERM or SIGINT; returns the exit code 0."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        loop.add_signal_handler(signal.SIGINT, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        log.info(
            "agent for host %s publishing to %s",
            self.settings.host_id,
            mask_url(self.url),
            extra={"interval_s": self.settings.agent_interval, "root": str(self._root)},
        )
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(self.sampling.run(stop_sampling))
        try:
            await self._discover("start", always=True)
            next_check = loop.time() + self.settings.agent_interval
            while not self._stopping:
                if self._reloading:
                    self._reloading = False
                    self._apply_reload()
                    await self._discover("reload", always=True)
                    next_check = loop.time() + self.settings.agent_interval
                elif loop.time() >= next_check:
                    next_check = loop.time() + self.settings.agent_interval
                    await self._discover("changed", always=False)
                await self._keep_connected()
                if self._pending is not None and self._js is not None and loop.time() >= self._retry_at:
                    await self._publish(self._js, self._pending)
                now = loop.time()
                retry = self._retry_at if self._retry_at > now else math.inf
                await self._sleep_until(min(next_check, now + LIVENESS_S, retry))
        finally:
            stop_sampling.set()
            await sampling
            await self._disconnect()
        log.info("stopped", extra={"host": self.settings.host_id})
        return 0

    def _nats_health(self) -> str | None:
        if self._js is not None:
            return None
        return f"not connected to {mask_url(self.url)} (retrying with backoff)"

    def _stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _reload(self) -> None:
        self._reloading = True
        self._wake.set()

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
        self._wake.clear()

    # ---- snapshots ----------------------------------------------------------------------------------

    async def _discover(self, reason: str, *, always: bool) -> None:
        """Run discovery; queue the snapshot `always`, or if anything in it changed."""
        try:
            record = await asyncio.to_thread(capacity_record, self.settings, self._root)
        except OSError as exc:  # readers tolerate bad files; this is e.g. a root that went away
            log.warning("discovery failed, nothing published: %s", exc)
            self._metrics.discovered(ok=False)
            return
        self._metrics.discovered(ok=True)
        if always or record != self._latest:
            self._queue(record, reason)

    def _queue(self, record: dict[str, Any], reason: str) -> None:
        """Make `record` the next event to publish (replacing one still waiting), with a new version."""
        self._latest = record
        self._pending = make_event(EVENT_TYPE, self.settings.host_id, record, self._versions.next())
        self._reason = reason

    def _apply_reload(self) -> None:
        """Re-read the configuration; a bad one is reported and the running one kept."""
        try:
            fresh = self._load()
        except LedgerError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc.message)
            return
        fixed = [key for key in FIXED_ON_RELOAD if getattr(fresh, key) != getattr(self.settings, key)]
        if fixed:
            log.warning(
                "restart ledger agent to change %s; the rest of the configuration is reloaded",
                ", ".join(fixed),
            )
        self.settings = dataclasses.replace(fresh, **{key: getattr(self.settings, key) for key in fixed})
        log.info("configuration reloaded")

    # ---- usage --------------------------------------------------------------------------------------

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable(f"not connected to NATS at {mask_url(self.url)}")
        return self._js

    async def _running_instances(self) -> list[InstanceUtilizationInfo]:
        """This host's Running instances, as the ledger knows them (the agent has no database)."""
        if self._nc is None or self._js is None:
            raise Unavailable(f"not connected to NATS at {mask_url(self.url)}")
        return await LedgerClient(self._nc).running_instances(self.settings.host_id)

    # ---- NATS ---------------------------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """Connect when there is no connection and the backoff allows; log only when the state changes."""
        if self._nc is not None and self._nc.is_closed:
            await self._went_down(f"lost the connection to {mask_url(self.url)}")
        if self._js is not None or asyncio.get_running_loop().time() < self._retry_at:
            return
        try:
            nc = await connect(
                self.url, self.settings, name=f"ledger-agent-{self.settings.host_id}", reconnect_forever=False
            )
        except Unavailable as exc:
            await self._went_down(exc.message.replace(self.url, mask_url(self.url)))
            return
        self._nc = nc
        try:
            js = nc.jetstream()
            await ensure_stream(js, stream_config())
        except Exception as exc:  # no JetStream, no permission, a timeout: the same wait and retry
            await self._went_down(
                f"JetStream is not available on {mask_url(self.url)}: {exc or type(exc).__name__}"
            )
            return
        self._js = js
        if self._down_since is None:
            log.info("connected to NATS at %s", mask_url(self.url))
        else:
            took = time.monotonic() - self._down_since
            log.info(
                "NATS at %s is back after %d failed attempts in %.1f s",
                mask_url(self.url),
                self._attempts,
                took,
            )
        self._down_since, self._attempts = None, 0

    async def _went_down(self, why: str) -> None:
        await self._disconnect()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("NATS is down: %s; %s", why, _RETRYING)
        self._back_off()

    def _back_off(self) -> None:
        delay = min(BACKOFF_FIRST_S * 2**self._attempts, BACKOFF_MAX_S)
        self._attempts += 1
        # ±20 %: a fleet of agents that lost one NATS does not come back to it in lockstep
        self._retry_at = asyncio.get_running_loop().time() + delay * random.uniform(0.8, 1.2)

    async def _publish(self, js: JetStreamContext, envelope: dict[str, Any]) -> None:
        try:
            await publish_event(js, envelope, retries=PUBLISH_RETRIES, timeout=PUBLISH_TIMEOUT_S)
        except Unavailable as exc:
            self._metrics.published(ok=False)
            if self._nc is None or self._nc.is_closed:
                await self._went_down(exc.message)
                return
            # connected, but the stream does not take it (full, no answer): keep the connection, retry later
            if not self._publish_failing:
                self._publish_failing = True
                log.warning("%s; %s", exc.message, _RETRYING)
            self._back_off()
            return
        self._metrics.published(ok=True)
        if self._publish_failing:
            log.info("publishing works again after %d failed attempts", self._attempts)
            self._publish_failing, self._attempts = False, 0
        if self._pending is envelope:
            self._pending = None
        data = envelope["data"]
        log.info(
            "published host.capacity for %s",
            envelope["host"],
            extra={
                "version": envelope["version"],
                "reason": self._reason,
                **{r.value: data[r.value]["capacity"] for r in ResourceType},
                "labels": ",".join(f"{k}={v}" for k, v in data["labels"].items()),
            },
        )

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is None or nc.is_closed:
            return
        try:
            await nc.drain()
        except Exception:  # NATS is down: nothing can be flushed; close what is left
            with contextlib.suppress(Exception):
                await nc.close()


async def run_agent(settings: Settings, load: Loader, root: Path) -> int:
    """`ledger agent`: run until SIGTERM or SIGINT, serving metrics and health on LEDGER_METRICS_ADDR (a
    ConfigError naming it when it cannot be bound)."""
    versions = Versions.open(settings.data_dir)
    nats_url_for(settings)  # no NATS to publish to is the first thing to say, before any port is bound
    observer = Observer.start(settings.metrics_addr)
    try:
        return await Agent(settings, load, root, versions, observer).run()
    finally:
        await asyncio.to_thread(observer.stop)


async def publish_once(settings: Settings, root: Path) -> int:
    """`ledger agent --once`: publish one snapshot and exit; Unavailable when NATS cannot take it."""
    url = nats_url_for(settings)
    versions = Versions.open(settings.data_dir)
    record = await asyncio.to_thread(capacity_record, settings, root)
    try:
        nc = await connect(url, settings, name=f"ledger-agent-{settings.host_id}", reconnect_forever=False)
    except Unavailable as exc:
        raise Unavailable(exc.message.replace(url, mask_url(url))) from None
    try:
        js = nc.jetstream()
        try:
            await ensure_stream(js, stream_config())
        except Exception as exc:  # no JetStream, no permission, a timeout
            raise Unavailable(
                f"JetStream is not available on {mask_url(url)}: {exc or type(exc).__name__}"
            ) from None
        envelope = make_event(EVENT_TYPE, settings.host_id, record, versions.next())
        await publish_event(js, envelope)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
    log.info("published host.capacity for %s", settings.host_id, extra={"version": envelope["version"]})
    return 0
