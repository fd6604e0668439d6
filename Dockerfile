# The ledger service: `ledger serve`, joining the NATS and PostgreSQL named by LEDGER_NATS_URL and
# LEDGER_DATABASE_URL (see docker-compose.yml); without them, SQLite and an embedded NATS server in the data
# dir. Build: docker build -t ledger .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEDGER_DATA_DIR=/var/lib/ledger \
    LEDGER_METRICS_ADDR=0.0.0.0:9464

RUN groupadd --system --gid 10001 ledger \
    && useradd --system --uid 10001 --gid ledger --home-dir /var/lib/ledger --shell /usr/sbin/nologin ledger \
    && install -d -o ledger -g ledger -m 0750 /var/lib/ledger

# Only what the package is built from (README.md* matches nothing until there is a README).
WORKDIR /build
COPY pyproject.toml README.md* ./
COPY ledger ./ledger
COPY migrations ./migrations
RUN pip install . && cd / && rm -rf /build
# The health check (deploy/readyz.sh): GET /readyz in plain bash, no Python interpreter started per check.
COPY --chmod=0755 deploy/readyz.sh /usr/local/bin/ledger-readyz

USER ledger
WORKDIR /var/lib/ledger
# The data dir: SQLite and the embedded NATS store when no LEDGER_DATABASE_URL / LEDGER_NATS_URL is set.
VOLUME ["/var/lib/ledger"]

# /metrics (Prometheus), /livez and /readyz on LEDGER_METRICS_ADDR (docs/metrics.md).
EXPOSE 9464
# Healthy = this container's process answers GET /readyz with 200: for `ledger serve` its database is
# reachable, its NATS connected and its event consumer running (for `ledger agent`: NATS connected). The
# probe asks this process, not whichever replica a NATS queue group would pick.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["ledger-readyz"]

# SIGTERM (docker stop) drains: in-flight requests are answered and the event batch in hand is committed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ledger"]
CMD ["serve", "--log-format", "json"]
