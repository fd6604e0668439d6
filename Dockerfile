# The ledger service: `ledger serve`, joining the NATS and PostgreSQL named by LEDGER_NATS_URL and
# LEDGER_DATABASE_URL (see docker-compose.yml); without them, SQLite and an embedded NATS server in the data
# dir. Build: docker build -t ledger .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEDGER_DATA_DIR=/var/lib/ledger

RUN groupadd --system --gid 10001 ledger \
    && useradd --system --uid 10001 --gid ledger --home-dir /var/lib/ledger --shell /usr/sbin/nologin ledger \
    && install -d -o ledger -g ledger -m 0750 /var/lib/ledger

# Only what the package is built from (README.md* matches nothing until there is a README).
WORKDIR /build
COPY pyproject.toml README.md* ./
COPY ledger ./ledger
COPY migrations ./migrations
RUN pip install . && cd / && rm -rf /build

USER ledger
WORKDIR /var/lib/ledger
# The data dir: SQLite and the embedded NATS store when no LEDGER_DATABASE_URL / LEDGER_NATS_URL is set.
VOLUME ["/var/lib/ledger"]

# Healthy = this container's `ledger serve` finished starting (it writes serve.json to the data dir after
# its NATS service is up, and removes it on exit) AND a ledger.v1.status request over the NATS it serves on
# is answered from the database. With several replicas on one NATS the queue group may route the status
# request to a sibling; the serve.json check is what is specific to this container.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD url="$(python -c 'import json, os; print(json.load(open(os.path.join(os.environ["LEDGER_DATA_DIR"], "serve.json")))["nats_url"])')" \
        && ledger status --json --nats-url "$url" > /dev/null || exit 1

# SIGTERM (docker stop) drains: in-flight requests are answered and the event batch in hand is committed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ledger"]
CMD ["serve", "--log-format", "json"]
