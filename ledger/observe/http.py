"""/metrics, /livez (alias /healthz) and /readyz on one address, served from threads of their own.

Why threads (prometheus_client's threading WSGI server) and not a handler on the asyncio loop: a scrape
reads the database and a readiness probe waits on it, up to its timeout; on the loop either would stall
every validate queued behind it. On their own threads they never touch the loop: what they read of it are
plain attributes (NATS connected, the consumer's state), and prometheus_client's metrics are thread-safe.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ledger.core.errors import ConfigError
from ledger.observe.health import Readiness

LIVE_PATHS = frozenset({"/livez", "/healthz"})
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # listening on all: reach it on loopback
StartResponse = Callable[..., Any]
_TEXT = (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"))


def _text() -> list[tuple[str, str]]:
    """Fresh headers for each response: wsgiref adds Content-Length to the list it is given."""
    return list(_TEXT)


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape or probe on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingWSGIServer):
    """prometheus_client's threading WSGI server, without HTTPServer's reverse DNS lookup of the listening
    address at start (`socket.getfqdn`, which can hang start-up on a host with broken DNS)."""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


def _app(
    registry: CollectorRegistry, readiness: Readiness
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path in LIVE_PATHS:
            start_response("200 OK", _text())
            return [b"ok\n"]
        if path == "/readyz":
            report = readiness.report()
            start_response("200 OK" if report.ready else "503 Service Unavailable", _text())
            return [report.text.encode()]
        start_response("404 Not Found", _text())
        return [b"not found: try /metrics, /livez, /healthz or /readyz\n"]

    return app


def split_addr(addr: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:9464`) as a host and a port."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class ObserveServer:
    """The HTTP server; `start` binds (or raises ConfigError naming the address) and serves until `stop`."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        reachable = WILDCARDS.get(str(host), str(host))
        self.url = f"http://[{reachable}]:{port}" if ":" in reachable else f"http://{reachable}:{port}"

    @classmethod
    def start(cls, addr: str, registry: CollectorRegistry, readiness: Readiness) -> ObserveServer:
        host, port = split_addr(addr)
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]

            class Server(_Server):
                address_family = family

            server = make_server(
                str(sockaddr[0]), port, _app(registry, readiness), Server, handler_class=_QuietHandler
            )
        except OSError as exc:  # in use, not an address of this machine, a port below 1024, a bad name
            raise ConfigError(
                f"cannot serve metrics on {addr}: {exc.strerror or exc}; set LEDGER_METRICS_ADDR to a free "
                "HOST:PORT (port 0: any free one), or to an empty value to turn metrics off",
                setting="metrics_addr",
            ) from None
        thread = threading.Thread(target=server.serve_forever, name="ledger-metrics", daemon=True)
        thread.start()
        return cls(server, thread)

    def stop(self) -> None:
        """Stop serving (waits up to half a second for the serving loop to notice) and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
