"""validate (= reserve) round trips over NATS against a real `ledger serve`, on SQLite and PostgreSQL, next to
a floor made of the two things a round trip cannot avoid.

For each engine a `ledger serve` subprocess runs with a throwaway data dir and huge capacity limits (nothing
is refused, holds last an hour so no expiry sweep runs): on SQLite the embedded default (its own nats-server
and `ledger.db`, the URL read from `<data_dir>/serve.json`), on PostgreSQL a fresh database and a nats-server
this bench starts. Asyncio tasks on one NATS connection each loop validate → reply (through `LedgerClient`)
for a fixed duration at concurrency 1, 8 and 32; reported: reservations/s, p50/p99 latency, and the CPU
seconds per 1,000 requests of the service, of nats-server and of this (client) process.

The floor, measured in the same invocation at the same concurrencies:
  * echo: a separate process with a plain nats-py subscriber that replies at once, on the same NATS server,
    driven by raw `nc.request` with the same request bytes;
  * tx: a one-row write transaction through SQLAlchemy Core on the same engine kind (`make_engine`): SQLite
    `BEGIN IMMEDIATE; INSERT; COMMIT` (threads queue on one lock, as the Ledger's do), PostgreSQL
    `BEGIN; SELECT … FOR UPDATE` of one row, `INSERT; COMMIT`, from as many threads as the concurrency.
floor round trip = echo p50 + tx p50; ratio = ledger / floor throughput, where the floor throughput is
  * at concurrency 1: 1 / (echo mean + tx mean) — one request in flight cannot overlap its NATS round trip
    with its transaction, so a floor service that does both answers no faster than their sum;
  * above 1: min(echo/s, tx/s) — requests in flight overlap, and the slower stage bounds the rate.
(`overlapped_floor_per_s` / `ledger_over_overlapped_floor` in the results give min(echo/s, tx/s) at every
concurrency too, the stricter bar that earlier runs of this bench used at concurrency 1 as well.)

`ledger serve` runs with its defaults, so on SQLite (the embedded NATS server) it busy-polls for 500 us after
each lone reply (LEDGER_BUSY_POLL_US, see docs/protocol.md) and on PostgreSQL (a NATS server it joins) it does
not; the echo responder never polls. `--busy-poll-us N` sets it for both engines (0 turns it off) to measure
what it is worth; the results record what serve used, and the CPU columns show what it costs.

Targets (issue): SQLite ≥ 1,000 reservations/s at concurrency 8, ≥ 50 % of the floor at every concurrency and
p99 ≤ 20 ms at concurrency 32; PostgreSQL ≥ 50 % of its floor at every concurrency.

`--profile-driver` runs EmbeddedNats + Ledger (SQLite) + LedgerService and the client tasks in one asyncio
loop in this process, for `python -m cProfile -o rpc.prof bench/rpc.py --profile-driver`; it also profiles the
service's database threads and splits each request's service-side wall time into phases.
Run: `python bench/rpc.py [--quick] [--skip-postgres]`; results go to bench/results/rpc.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nats
from common import PgDatabase, summarize, write_results
from nats.aio.client import Client
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

from ledger.bus.embedded import EmbeddedNats, terminate
from ledger.client import LedgerClient
from ledger.store.engine import is_sqlite, make_engine

REPO = Path(__file__).resolve().parent.parent
HOST = "bench"
CONCURRENCIES = [1, 8, 32]  # --concurrency replaces it
ECHO_SUBJECT = "bench.echo"
# every bandwidth stated, so every version of the ledger charges this request the same and runs of
# different versions compare (earlier versions charged an unstated bandwidth 0, now the vCPU-share default)
REQUEST = {
    "vcpus": 1,
    "memory_bytes": 2**20,
    "network_download_bps": 1000,
    "network_upload_bps": 0,
    "disk_io_bps": 1000,
}
HUGE = str(10**15)  # every capacity limit: nothing is ever refused
START_TIMEOUT_S = 60.0
TICKS = os.sysconf("SC_CLK_TCK")


# ---- process CPU accounting ------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (0 when it is gone or unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def child_pids(pid: int) -> list[int]:
    """Children of every thread of `pid` (serve starts nats-server from a worker thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class CpuMeter:
    """CPU seconds used by named processes (and this one) between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start["client"] = time.process_time()

    def stop(self, requests: int) -> dict[str, float]:
        used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        used["client"] = time.process_time() - self._start["client"]
        return {f"{name}_cpu_ms_per_req": round(1000 * s / max(requests, 1), 3) for name, s in used.items()}


# ---- the closed-loop driver ------------------------------------------------------------------------------


async def closed_loop(
    call: Callable[[], Awaitable[Any]], concurrency: int, duration: float, warmup: int
) -> tuple[float, list[float]]:
    """`concurrency` tasks each calling `call` back to back until `duration` is up; (elapsed, latencies)."""
    await asyncio.gather(*(call() for _ in range(warmup)))
    latencies: list[float] = []
    deadline = 0.0

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def row_for(kind: str, concurrency: int, elapsed: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "kind": kind,
        "concurrency": concurrency,
        "requests": len(latencies),
        "per_s": round(len(latencies) / elapsed, 1),
        **summarize(latencies),
    }


# ---- ledger serve as a subprocess ------------------------------------------------------------------------


# settings main() passes on to every `ledger serve` (e.g. --plain-admission)
SERVE_SETTINGS: dict[str, str] = {}


def serve_env(
    data_dir: Path, database_url: str | None, nats_url: str | None, busy_poll_us: int | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(
        LEDGER_DATA_DIR=str(data_dir),
        LEDGER_HOST_ID=HOST,
        LEDGER_RESERVATION_TTL="3600",
        LEDGER_METRICS_ADDR="127.0.0.1:0",  # any free port: never fight another serve over the default
        CPU_LIMIT=HUGE,
        MEMORY_LIMIT=HUGE,
        NETWORK_LIMIT=HUGE,
        DISK_LIMIT=HUGE,
        DISK_IO_LIMIT=HUGE,
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["LEDGER_DATABASE_URL"] = database_url
    if nats_url:
        env["LEDGER_NATS_URL"] = nats_url
    if busy_poll_us is not None:
        env["LEDGER_BUSY_POLL_US"] = str(busy_poll_us)
    env.update(SERVE_SETTINGS)
    return env


class Serve:
    """`python -m ledger serve`, started and waited for (serve.json), stopped with SIGTERM."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        nats_url: str | None = None,
        busy_poll_us: int | None = None,
    ):
        self.data_dir = data_dir
        self.env = serve_env(data_dir, database_url, nats_url, busy_poll_us)
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Serve:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = self.data_dir / "serve.json"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve"],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ledger serve exited {self.process.returncode}: {self._tail()}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.url = json.loads(runtime.read_text())["nats_url"]
                return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"ledger serve did not write serve.json within {START_TIMEOUT_S:.0f} s")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def busy_poll_us(self) -> int | None:
        """The busy-poll window serve chose (its start-up log line says), None if not found."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        found = re.search(r"busy_poll_us=(\d+)", text)
        return int(found.group(1)) if found else None

    def nats_server_pid(self) -> int | None:
        assert self.process is not None
        return next((p for p in child_pids(self.process.pid) if process_name(p) == "nats-server"), None)

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        terminate(process, 60)


# ---- the echo responder ----------------------------------------------------------------------------------


async def echo_responder(url: str) -> None:
    """The floor's NATS side: reply to every request at once with its own bytes (run as its own process)."""
    nc = await nats.connect(url, name="bench-echo")

    async def reply(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, queue="bench-echo", cb=reply)
    await nc.flush()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.drain()


@contextlib.contextmanager
def echo_process(url: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--echo-responder", url],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the echo responder did not start")
        yield process
    finally:
        terminate(process, 10)


# ---- the one-row transaction floor -----------------------------------------------------------------------

FLOOR = MetaData()
floor_rows = Table(
    "rpc_floor",
    FLOOR,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host_id", String(255), nullable=False),
    Column("worker", Integer, nullable=False),
    Column("n", Integer, nullable=False),
)
floor_lock = Table("rpc_floor_lock", FLOOR, Column("id", Integer, primary_key=True))


def tx_floor(url: str, concurrency: int, duration: float) -> dict[str, Any]:
    """One-row write transactions from `concurrency` threads for `duration` seconds."""
    engine = make_engine(url)
    FLOOR.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(select(floor_lock.c.id)).first() is None:
            conn.execute(insert(floor_lock), {"id": 1})
    sqlite = is_sqlite(engine)
    writer: contextlib.AbstractContextManager[Any] = threading.Lock() if sqlite else contextlib.nullcontext()
    lock_row = select(floor_lock.c.id).where(floor_lock.c.id == 1).with_for_update()
    add_row = insert(floor_rows)

    def one(worker: int, n: int) -> None:
        with writer, engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE (the engine's begin event)
            if not sqlite:
                conn.execute(lock_row).one()
            conn.execute(add_row, {"host_id": HOST, "worker": worker, "n": n})

    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def run(worker: int) -> None:
        for n in range(20):  # warm the pool and the statement cache
            one(worker, -n - 1)
        barrier.wait()
        out, n = per_thread[worker], 0
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            one(worker, n)
            out.append(time.perf_counter() - t0)
            n += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + 3600
    barrier.wait()
    start = time.perf_counter()
    deadline[0] = start + duration
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    engine.dispose()
    return row_for("tx", concurrency, elapsed, [x for out in per_thread for x in out])


# ---- one engine --------------------------------------------------------------------------------------------


async def ledger_and_echo(
    url: str, pids: dict[str, int | None], duration: float, warmup: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nc: Client = await nats.connect(url, name="bench-rpc")
    client = LedgerClient(nc, timeout=30.0)
    echo_payload = json.dumps(REQUEST).encode()
    ledger_rows, echo_rows = [], []
    try:
        with echo_process(url) as echo:

            async def validate() -> None:
                await client.validate(**REQUEST)

            async def ping() -> None:
                await nc.request(ECHO_SUBJECT, echo_payload, timeout=30.0)

            for concurrency in CONCURRENCIES:
                for kind, call, meter_pids in (
                    ("ledger", validate, pids),
                    ("echo", ping, {"echo": echo.pid, "nats": pids["nats"]}),
                ):
                    meter = CpuMeter(meter_pids)
                    meter.start()
                    elapsed, latencies = await closed_loop(call, concurrency, duration, warmup)
                    row = row_for(kind, concurrency, elapsed, latencies)
                    row.update(meter.stop(len(latencies)))
                    (ledger_rows if kind == "ledger" else echo_rows).append(row)
                    cpu = " ".join(f"{k.split('_')[0]} {v}" for k, v in row.items() if k.endswith("per_req"))
                    print(
                        f"  {kind:6} c={concurrency:<3} {row['per_s']:>9} req/s  p50 {row['p50_ms']:7.3f} ms "
                        f" p99 {row['p99_ms']:7.3f} ms  cpu ms/req: {cpu}",
                        flush=True,
                    )
    finally:
        await nc.close()
    return ledger_rows, echo_rows


def combine(
    engine: str, ledger: list[dict[str, Any]], echo: list[dict[str, Any]], tx: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    table = []
    for led, ech, t in zip(ledger, echo, tx, strict=True):
        overlapped = min(ech["per_s"], t["per_s"])
        serial = 1 / (1 / ech["per_s"] + 1 / t["per_s"])  # per_s at c=1 is 1 / mean round trip
        floor_per_s = round(serial, 1) if led["concurrency"] == 1 else overlapped
        table.append(
            {
                "engine": engine,
                "concurrency": led["concurrency"],
                "ledger_per_s": led["per_s"],
                "ledger_p50_ms": led["p50_ms"],
                "ledger_p99_ms": led["p99_ms"],
                "echo_per_s": ech["per_s"],
                "echo_p50_ms": ech["p50_ms"],
                "tx_per_s": t["per_s"],
                "tx_p50_ms": t["p50_ms"],
                "floor_rtt_p50_ms": round(ech["p50_ms"] + t["p50_ms"], 3),
                "floor_per_s": floor_per_s,
                "ledger_over_floor": round(led["per_s"] / floor_per_s, 3),
                "floor_basis": "serial" if led["concurrency"] == 1 else "overlapped",
                "overlapped_floor_per_s": overlapped,
                "ledger_over_overlapped_floor": round(led["per_s"] / overlapped, 3),
            }
        )
    return table


def bench_engine(
    engine: str, tmp: Path, duration: float, warmup: int, busy_poll_us: int | None
) -> dict[str, Any]:
    print(f"{engine}: ledger serve + echo over NATS, {duration:.0f} s per point", flush=True)
    busy_poll: int | None = None
    with contextlib.ExitStack() as database:
        db_url = None if engine == "sqlite" else database.enter_context(PgDatabase())
        with contextlib.ExitStack() as stack:
            if db_url is None:
                serve = stack.enter_context(Serve(tmp / "sqlite", busy_poll_us=busy_poll_us))
                nats_pid = serve.nats_server_pid()
            else:
                server = stack.enter_context(EmbeddedNats(tmp / "pg-nats"))
                serve = stack.enter_context(Serve(tmp / "pg", db_url, server.url, busy_poll_us))
                nats_pid = server.process.pid if server.process else None
            assert serve.process is not None
            pids = {"service": serve.process.pid, "nats": nats_pid}
            ledger_rows, echo_rows = asyncio.run(ledger_and_echo(serve.url, pids, duration, warmup))
            busy_poll = serve.busy_poll_us()
            print(f"  (ledger serve polled {busy_poll} us after each lone reply)", flush=True)
        # the service and its NATS are stopped: the transaction floor gets the CPUs to itself
        floor_url = db_url or f"sqlite:///{tmp}/sqlite/floor.db"  # same filesystem as ledger.db
        tx_rows = []
        for concurrency in CONCURRENCIES:
            row = tx_floor(floor_url, concurrency, duration)
            tx_rows.append(row)
            print(
                f"  tx     c={concurrency:<3} {row['per_s']:>9} tx/s   p50 {row['p50_ms']:7.3f} ms  "
                f"p99 {row['p99_ms']:7.3f} ms",
                flush=True,
            )
    return {
        "engine": engine,
        "busy_poll_us": busy_poll,
        "ledger": ledger_rows,
        "echo": echo_rows,
        "tx": tx_rows,
        "table": combine(engine, ledger_rows, echo_rows, tx_rows),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'engine':10} {'c':>3} {'ledger/s':>9} {'p50 ms':>7} {'p99 ms':>7} | {'echo/s':>8} {'echo p50':>8} "
        f"{'tx/s':>8} {'tx p50':>7} | {'floor/s':>8} {'basis':>10} {'floor rtt':>9} {'ratio':>6} "
        f"{'ratio to min(echo, tx)':>22}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['engine']:10} {r['concurrency']:>3} {r['ledger_per_s']:>9} {r['ledger_p50_ms']:>7.2f} "
            f"{r['ledger_p99_ms']:>7.2f} | {r['echo_per_s']:>8} {r['echo_p50_ms']:>8.3f} {r['tx_per_s']:>8} "
            f"{r['tx_p50_ms']:>7.3f} | {r['floor_per_s']:>8} {r['floor_basis']:>10} "
            f"{r['floor_rtt_p50_ms']:>9.3f} {r['ledger_over_floor']:>6.2f} "
            f"{r['ledger_over_overlapped_floor']:>22.2f}"
        )


def verdict(table: list[dict[str, Any]]) -> dict[str, bool]:
    sqlite = {r["concurrency"]: r for r in table if r["engine"] == "sqlite"}
    pg = [r for r in table if r["engine"] == "postgresql"]
    result = {  # each target judged where it was measured (--concurrency may leave some points out)
        "sqlite_at_least_half_floor_every_concurrency": all(
            r["ledger_over_floor"] >= 0.5 for r in sqlite.values()
        ),
    }
    if 8 in sqlite:
        result["sqlite_c8_at_least_1000_per_s"] = sqlite[8]["ledger_per_s"] >= 1000
    if 32 in sqlite:
        result["sqlite_c32_p99_at_most_20_ms"] = sqlite[32]["ledger_p99_ms"] <= 20
    if pg:
        result["postgresql_at_least_half_floor_every_concurrency"] = all(
            r["ledger_over_floor"] >= 0.5 for r in pg
        )
    return result


# ---- the in-process profile driver -----------------------------------------------------------------------


class _Probe:
    """Wraps the service's group admission (`ledger.try_reserve_many` on the event loop, else
    `ledger.reserve_many` in a thread): per-thread cProfile (CPU time) and per-phase wall time per request."""

    def __init__(self, service: Any, service_module: Any, *, profile: bool) -> None:
        self.profile = profile
        self.phases: Counter[str] = Counter()
        self.groups = 0
        self.profiles: list[cProfile.Profile] = []
        self._local = threading.local()
        self._module = service_module
        self._parse = service_module.parse_request
        self._ledger = service.ledger
        self._reserve_many = service.ledger.reserve_many
        self._try_reserve_many = service.ledger.try_reserve_many
        self._submitted: list[float] = []
        service.ledger.reserve_many = self.reserve_many
        service.ledger.try_reserve_many = self.try_reserve_many
        service_module.parse_request = self.parse

    def parse(self, endpoint: str, payload: bytes) -> dict[str, Any]:
        t0 = time.perf_counter()
        body = self._parse(endpoint, payload)
        t1 = time.perf_counter()
        self._submitted.append(t1)
        self.phases["parse_request (event loop)"] += t1 - t0
        return body

    def try_reserve_many(self, requests: list[Any]) -> list[Any] | None:
        t_start = time.perf_counter()
        outcomes = self._try_reserve_many(requests)
        if outcomes is not None:
            submitted, self._submitted = self._submitted[: len(requests)], self._submitted[len(requests) :]
            self.phases["parsed -> group starts on the event loop"] += sum(t_start - t for t in submitted)
            self.phases["try_reserve_many on the event loop (wall, per request in it)"] += (
                time.perf_counter() - t_start
            ) * len(requests)
            self.groups += 1
        return outcomes

    def reserve_many(self, requests: list[Any], **options: Any) -> list[Any]:
        t_start = time.perf_counter()
        submitted, self._submitted = self._submitted[: len(requests)], self._submitted[len(requests) :]
        self.phases["parsed -> group starts in a db thread (queue, hop, GIL)"] += sum(
            t_start - t for t in submitted
        )
        self.groups += 1
        profile = None
        if self.profile:
            profile = getattr(self._local, "profile", None)
            if profile is None:
                profile = self._local.profile = cProfile.Profile(time.thread_time)
                self.profiles.append(profile)
            profile.enable()
        try:
            return self._reserve_many(requests, **options)
        finally:
            if profile is not None:
                profile.disable()
            self.phases["reserve_many in the db thread (wall, per request in it)"] += (
                time.perf_counter() - t_start
            ) * len(requests)

    def restore(self) -> None:
        self._module.parse_request = self._parse
        self._ledger.reserve_many = self._reserve_many
        self._ledger.try_reserve_many = self._try_reserve_many

    def print(self, done: int) -> None:
        print(f"  {self.groups} groups, {done / max(self.groups, 1):.1f} requests per group")
        for phase, seconds in self.phases.items():
            print(f"  {phase:60} {1000 * seconds / done:7.3f} ms/req")
        if not self.profiles:
            return
        stats = pstats.Stats(self.profiles[0], stream=io.StringIO())
        for extra in self.profiles[1:]:
            stats.add(extra)
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(30)
        print("database threads, CPU time (thread_time) by function:")
        print(out.getvalue())


async def profile_driver(requests: int, concurrency: int, threads: int, *, thread_profile: bool) -> None:
    """EmbeddedNats + Ledger (SQLite) + LedgerService + client tasks in this one loop; run it under
    `python -m cProfile -o FILE` for the event loop. The database threads are profiled here (cProfile only
    follows the main thread) and every request's service-side wall time is split into phases."""
    from ledger.bus import service as service_module
    from ledger.core.resources import Capacity, ResourceType, Source
    from ledger.store.ledger import Ledger

    with (
        tempfile.TemporaryDirectory(prefix="ledger-rpc-prof-") as tmp_name,
        EmbeddedNats(Path(tmp_name) / "nats") as server,
    ):
        ledger = Ledger.open(f"sqlite:///{tmp_name}/ledger.db", reservation_ttl=3600)
        ledger.register_host(HOST, {r: Capacity(10**15, Source.CONFIGURED) for r in ResourceType}, {})
        service_nc = await nats.connect(server.url)
        service = service_module.LedgerService(service_nc, ledger, default_host=HOST, threads=threads)
        probe = _Probe(service, service_module, profile=thread_profile)
        await service.start()
        client_nc = await nats.connect(server.url)
        client = LedgerClient(client_nc, timeout=30.0)

        async def worker(n: int) -> None:
            for _ in range(n):
                await client.validate(**REQUEST)

        await asyncio.gather(*(client.validate(**REQUEST) for _ in range(50)))
        probe.phases.clear()
        main_cpu, start = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        elapsed, main_cpu = time.perf_counter() - start, time.thread_time() - main_cpu
        done = requests // concurrency * concurrency
        print(
            f"profile driver: {done} validates, c={concurrency}, {threads} db threads: {elapsed:.2f} s = "
            f"{done / elapsed:.0f}/s; event-loop thread CPU {1000 * main_cpu / done:.3f} ms/req "
            "(service + client in one process)"
        )
        probe.print(done)
        await service.stop()
        await client_nc.close()
        await service_nc.close()
        probe.restore()
        ledger.close()


# ---- main --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s per point instead of --duration")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured point")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--busy-poll-us",
        type=int,
        metavar="US",
        help="LEDGER_BUSY_POLL_US for ledger serve (default: unset, so serve picks its own)",
    )
    parser.add_argument(
        "--plain-admission",
        action="store_true",
        help="PostgreSQL without the one-round-trip admission strategy "
        "(LEDGER_ONE_ROUND_TRIP_ADMISSION=false), "
        "to measure what the strategy is worth",
    )
    parser.add_argument(
        "--serve-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment setting for every ledger serve (repeatable), e.g. LEDGER_METRICS_ADDR=",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        metavar="N",
        help="measure at N requests in flight (repeatable; default 1, 8 and 32)",
    )
    parser.add_argument(
        "--results", default="rpc", metavar="NAME", help="write bench/results/NAME.json (default rpc)"
    )
    parser.add_argument("--echo-responder", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--profile-driver", action="store_true", help="the in-process driver (see above)")
    parser.add_argument("--profile-requests", type=int, default=4000)
    parser.add_argument("--profile-concurrency", type=int, default=8)
    parser.add_argument("--profile-threads", type=int, default=16, help="the service's db threads")
    parser.add_argument(
        "--no-thread-profile", action="store_true", help="phase timings only (no cProfile in db threads)"
    )
    args = parser.parse_args()
    if args.echo_responder:
        asyncio.run(echo_responder(args.echo_responder))
        return
    if args.profile_driver:
        asyncio.run(
            profile_driver(
                args.profile_requests,
                args.profile_concurrency,
                args.profile_threads,
                thread_profile=not args.no_thread_profile,
            )
        )
        return
    if args.concurrency:
        CONCURRENCIES[:] = args.concurrency
    for setting in args.serve_setting:
        name, _, value = setting.partition("=")
        SERVE_SETTINGS[name] = value
    if args.plain_admission:
        SERVE_SETTINGS["LEDGER_ONE_ROUND_TRIP_ADMISSION"] = "false"
    duration = 2.0 if args.quick else args.duration
    warmup = 50
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    engines = []
    with tempfile.TemporaryDirectory(prefix="ledger-rpc-") as tmp_name:
        tmp = Path(tmp_name)
        engines.append(bench_engine("sqlite", tmp, duration, warmup, args.busy_poll_us))
        if not args.skip_postgres:
            engines.append(bench_engine("postgresql", tmp, duration, warmup, args.busy_poll_us))
    table = [r for e in engines for r in e["table"]]
    print()
    print_table(table)
    targets = verdict(table)
    print("targets:", targets)
    path = write_results(
        args.results,
        {
            "quick": args.quick,
            "serve_settings": SERVE_SETTINGS,
            "duration_s": duration,
            "concurrencies": list(CONCURRENCIES),
            "request": REQUEST,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "table": table,
            "engines": engines,
            "targets_met": targets,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
