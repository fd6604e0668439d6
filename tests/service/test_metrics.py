"""/metrics of a running `ledger serve` (and `ledger agent`), scraped over HTTP as Prometheus would: the
ledger's gauges move after a validate and after a lifecycle event, requests, refusals and dead letters are
counted; every query in the Grafana dashboard and every metric in docs/metrics.md is one the processes
export; a metrics address that cannot be bound stops the process at start with one line."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from ledger.client import LedgerClient
from ledger.core.charges import AllocationRequest
from ledger.core.errors import InsufficientResources
from ledger.core.resources import RESOURCES
from ledger.events.apply import apply_event
from ledger.events.contract import make_event, parse_event
from ledger.observe.capacity import UNITS, CapacityCollector
from ledger.observe.database import ObserveDatabase
from ledger.store.ledger import Ledger
from tests.conftest import capacities
from tests.hosttree import materialize_host_tree
from tests.service.conftest import ServeFactory
from tests.service.helpers import (
    GIB,
    LIMITS,
    REPO,
    base_env,
    exported_names,
    http_get,
    logged_base_url,
    promql_metric_names,
    run_cli,
    serve_env,
    start_agent,
    stop_process,
    unique,
    value,
)

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ledger.json"
DOCS = REPO / "docs" / "metrics.md"
PROMETHEUS_OWN = {"up"}  # what Prometheus records about each scrape itself


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_gauges_follow_a_validate_a_refusal_an_event_and_a_dead_letter(
    serve_factory: ServeFactory, tmp_path: Path
) -> None:
    host = unique("metrics")
    data_dir = tmp_path / "data"
    serve = await asyncio.to_thread(serve_factory, data_dir, serve_env(data_dir, host))
    cpu = {"host": host, "resource": "cpu", "unit": "vcpu"}
    memory = {"host": host, "resource": "memory", "unit": "byte"}

    text = serve.scrape()
    assert value(text, "ledger_capacity", **cpu) == 8
    assert value(text, "ledger_effective_limit", **cpu) == 32  # 8 × the default 4.0
    assert value(text, "ledger_oversubscription_ratio", host=host, resource="cpu") == 4.0
    assert (value(text, "ledger_allocated", **cpu), value(text, "ledger_pending", **cpu)) == (0, 0)
    assert value(text, "ledger_available", **cpu) == 32
    assert value(text, "ledger_capacity", **memory) == 16 * GIB
    assert value(text, "ledger_database_up") == 1
    assert value(text, "ledger_nats_connected") == 1
    assert value(text, "ledger_requests_total", endpoint="validate", code="ok") == 0
    assert "ledger_build_info{" in text

    async with await LedgerClient.connect(serve.nats_url, reconnect_forever=False) as client:
        grant = await client.validate(vcpus=2, memory_bytes=GIB)
        text = serve.scrape()
        assert value(text, "ledger_pending", **cpu) == 2
        assert value(text, "ledger_available", **cpu) == 30
        assert value(text, "ledger_pending", **memory) == GIB
        assert value(text, "ledger_requests_total", endpoint="validate", code="ok") == 1
        assert value(text, "ledger_request_duration_seconds_count", endpoint="validate") == 1

        with pytest.raises(InsufficientResources):
            await client.validate(vcpus=10_000)
        text = serve.scrape()
        assert value(text, "ledger_requests_total", endpoint="validate", code="insufficient_resources") == 1
        assert value(text, "ledger_refusals_total", endpoint="validate", resource="cpu") == 1
        assert value(text, "ledger_refusals_total", endpoint="validate", resource="memory") == 0
        assert value(text, "ledger_pending", **cpu) == 2  # a refusal holds nothing

        record = {
            "id": "i-1",
            "name": "vm-1",
            "state": "Running",
            "vcpus": 2,
            "memory_bytes": GIB,
            "reservation_id": grant.reservation_id,
        }
        await client.publish_event(make_event("instance.created", host, record, 1))
        await eventually(lambda: value(serve.scrape(), "ledger_allocated", **cpu) == 2, "the instance")
        text = serve.scrape()
        assert value(text, "ledger_pending", **cpu) == 0  # the hold became the allocation
        assert value(text, "ledger_available", **cpu) == 30
        assert value(text, "ledger_allocated", **memory) == GIB
        assert value(text, "ledger_events_total", outcome="applied") == 1
        assert (value(text, "ledger_event_batch_duration_seconds_count") or 0) >= 1

        await client.nc.jetstream().publish(f"ledger.events.{host}.instance.created", b"{not json")
        await eventually(
            lambda: value(serve.scrape(), "ledger_events_total", outcome="dead_letter") == 1, "a dead letter"
        )
        # the stored count is refreshed every few seconds, not at scrape time
        await eventually(lambda: value(serve.scrape(), "ledger_dead_letters", host=host) == 1, "the count")
        text = serve.scrape()
        assert value(text, "ledger_reservations_held", host=host) == 0
        assert value(text, "ledger_events_pending") == 0


def test_a_scrape_reads_the_running_totals_in_one_query_and_agrees_with_status(
    ledger: Ledger, db_url: str, host_id: str
) -> None:
    """On both engines: one statement per scrape, over hosts and capacities only (never the instances or
    reservations), and the gauges are the figures `status` reports."""
    ledger.register_host(host_id, capacities(), {})
    for i in range(5):
        record = {"id": f"i-{i}", "name": f"vm-{i}", "state": "Running", "vcpus": 2, "memory_bytes": GIB}
        envelope = make_event("instance.created", host_id, record, 1)
        apply_event(
            ledger, parse_event(json.dumps(envelope).encode(), f"ledger.events.{host_id}.instance.created")
        )
    ledger.reserve(host_id, AllocationRequest(vcpus=3, memory_bytes=GIB, disk_bytes=10**9))
    db = ObserveDatabase(db_url)
    collector = CapacityCollector(db)
    try:
        list(collector.collect())  # the first connection may run the dialect's own set-up queries
        statements: list[str] = []
        event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        families = {family.name: family for family in collector.collect()}
    finally:
        db.close()
    assert len(statements) == 1, statements
    assert "instances" not in statements[0] and "reservations" not in statements[0]
    found = {
        (family, sample.labels["resource"]): sample.value
        for family, metric in families.items()
        for sample in metric.samples
        if sample.labels.get("host") == host_id and "unit" in sample.labels
    }
    for resource in RESOURCES:
        status = ledger.status(host_id, resource)
        r = resource.value
        assert UNITS[r]
        assert found["ledger_capacity", r] == status.capacity
        assert found["ledger_effective_limit", r] == status.effective_limit
        assert found["ledger_allocated", r] == status.allocated
        assert found["ledger_pending", r] == status.pending
        assert found["ledger_available", r] == status.available
    assert (found["ledger_allocated", "cpu"], found["ledger_pending", "cpu"]) == (10, 3)
    assert families["ledger_database_up"].samples[0].value == 1


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable.get("definition", ""))
        if found:
            queries.append(found.group(1))
    return queries


async def test_every_dashboard_query_and_documented_metric_is_exported(
    serve_factory: ServeFactory, tmp_path: Path
) -> None:
    host = unique("dash")
    data_dir = tmp_path / "serve"
    serve = await asyncio.to_thread(serve_factory, data_dir, serve_env(data_dir, host))
    env = {**base_env(), **LIMITS, "LEDGER_DATA_DIR": str(tmp_path / "agent")}
    env.update(LEDGER_HOST_ID=unique("agent"), LEDGER_NATS_URL=serve.nats_url, PYTHONUNBUFFERED="1")
    root = materialize_host_tree(REPO / "tests" / "fixtures" / "hosts" / "cpu-vm", tmp_path / "cpu-vm")
    agent = start_agent(tmp_path / "agent", env, "--root", str(root))
    try:
        agent_base = await asyncio.to_thread(logged_base_url, tmp_path / "agent" / "agent.err", agent)
        await eventually(
            lambda: (
                value(http_get(agent_base + "/metrics")[1], "ledger_agent_publishes_total", outcome="ok") == 1
            ),
            "the agent's first publish",
        )
        agent_text = http_get(agent_base + "/metrics")[1]
    finally:
        assert await asyncio.to_thread(stop_process, agent) == 0
    serve_text = serve.scrape()
    assert value(agent_text, "ledger_agent_nats_connected") == 1
    assert (value(agent_text, "ledger_agent_last_discovery_timestamp_seconds") or 0) > 0
    exported = exported_names(serve_text) | exported_names(agent_text)

    queries = _dashboard_queries()
    assert len(queries) > 20
    for query in queries:
        names = promql_metric_names(query)
        assert names, query
        assert names <= exported | PROMETHEUS_OWN, f"{query}: {sorted(names - exported)} not exported"

    documented = set(re.findall(r"^\| `(ledger_\w+)` \|", DOCS.read_text(), re.MULTILINE))
    families = {
        family.name + {"counter": "_total", "info": "_info"}.get(family.type, "")
        for text in (serve_text, agent_text)
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ledger_")
    }
    assert families - documented == set(), "exported but not in docs/metrics.md"
    assert documented - families == set(), "in docs/metrics.md but not exported"


def test_metrics_can_be_turned_off(serve_factory: ServeFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    serve = serve_factory(data_dir, serve_env(data_dir, unique("off"), LEDGER_METRICS_ADDR=""))
    assert serve.info["metrics_url"] is None


def _taken_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_a_metrics_address_in_use_stops_serve_at_start_with_one_line(tmp_path: Path) -> None:
    sock, port = _taken_port()
    with sock:
        env = serve_env(tmp_path / "data", unique("taken"), LEDGER_METRICS_ADDR=f"127.0.0.1:{port}")
        done = run_cli("serve", env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(lines) == 1 and "LEDGER_METRICS_ADDR" in lines[0], done.stderr
    assert "in use" in lines[0].lower() and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "serve.json").exists()


def test_a_metrics_address_in_use_stops_the_agent_at_start_with_one_line(tmp_path: Path) -> None:
    sock, port = _taken_port()
    with sock:
        env = {**base_env(), **LIMITS, "LEDGER_DATA_DIR": str(tmp_path / "agent")}
        env.update(
            LEDGER_HOST_ID=unique("agent"),
            LEDGER_NATS_URL="nats://127.0.0.1:1",
            LEDGER_METRICS_ADDR=f"127.0.0.1:{port}",
        )
        done = run_cli("agent", env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "LEDGER_METRICS_ADDR" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
