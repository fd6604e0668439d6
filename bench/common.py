"""Helpers shared by the benchmarks: percentiles, throwaway databases, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN_URL = os.environ.get("LEDGER_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(latencies_s: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(latencies_s) * 1000, 3),
        "p99_ms": round(percentile(latencies_s, 0.99) * 1000, 3),
    }


class PgDatabase:
    """A fresh PostgreSQL database, dropped on exit."""

    def __init__(self) -> None:
        self.name = f"ledger_bench_{uuid.uuid4().hex[:10]}"
        self.admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def __enter__(self) -> str:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return make_url(PG_ADMIN_URL).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    data = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
