"""The `ledger` NATS micro service: request-reply endpoints under `ledger.v1.` over the one ledger core.

The micro API awaits one handler at a time per endpoint, so no handler waits for the database: a validate is
parsed and queued, and one admitter takes everything queued as a group into one transaction (in arrival
order, each against what its predecessors left) and answers each, so one commit serves many callers. A
place is queued likewise, and one placer answers what is queued as a group (`Ledger.place_many`: one
search and one statement per host serve many callers). Other requests are answered in their own tasks (up
to `max_inflight` at once) with the database work in a thread pool. Correctness comes from the database's
locks, so several replicas in the queue group share the load safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from ledger import __version__
from ledger.bus.busy_poll import BusyPoll
from ledger.bus.groups import GroupQueue
from ledger.bus.protocol import (
    ENDPOINTS,
    PREFIX,
    SearchRequest,
    ValidateRequest,
    allocation_request,
    error_reply,
    grant_reply,
    ok,
    parse_request,
    reservation_lookup,
    resource_field,
)
from ledger.core.capacity import check_amount
from ledger.core.charges import Ask
from ledger.core.errors import InvalidRequest, LedgerError
from ledger.core.placement import DEFAULT_ATTEMPTS, DEFAULT_LIMIT, MAX_ATTEMPTS, MAX_LIMIT, PlaceCall
from ledger.core.results import MAX_PAGE, Grant
from ledger.observe.registry import new_registry
from ledger.observe.requests import RequestMetrics
from ledger.store.ledger import HostAsk, Ledger

log = logging.getLogger("ledger.service")

SERVICE_NAME = "ledger"
QUEUE_GROUP = "ledger"
DEFAULT_STATUS_LIMIT = 1000  # instances per status reply unless `limit` says otherwise (docs/protocol.md)
REPLY_HEADROOM = 4096  # of the server's max_payload, left for the reply's headers

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class LedgerService:
    """Answers validate, release, status, can_allocate, defaults, image_pull_check, hosts, candidates and
    place."""

    def __init__(
        self,
        nc: Client,
        ledger: Ledger,
        *,
        default_host: str | None,
        max_image_storage: float = 0.2,
        disk_io_burst_multiplier: float = 4.0,
        max_inflight: int = 256,
        threads: int = 4,
        max_group: int = 64,
        busy_poll_s: float = 0.0,
        background_idle: Callable[[], bool] = lambda: True,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.nc = nc
        self.ledger = ledger
        self.default_host = default_host
        self.max_image_storage = max_image_storage
        self.burst = disk_io_burst_multiplier
        self._slots = asyncio.Semaphore(max_inflight)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ledger-db")
        # groups are admitted one at a time: one thread (and so one warm connection) is all they need
        self._admission_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-admit")
        self._inflight: set[asyncio.Task[None]] = set()
        self._service: Service | None = None
        self.max_inflight = max_inflight
        self.max_group = max_group
        # parsed validates and places waiting for the next group, with when each arrived
        self._validates: GroupQueue[tuple[Request, HostAsk, float]] = GroupQueue(max_inflight)
        self._places: GroupQueue[tuple[Request, PlaceCall, float]] = GroupQueue(max_inflight)
        self._groupers: list[asyncio.Task[None]] = []
        self._background_idle = background_idle  # e.g. no event batch on a thread
        self._busy_poll = BusyPoll(busy_poll_s, self._nothing_in_flight)
        self.metrics = metrics or RequestMetrics(new_registry(), ENDPOINTS)
        # validate and place are queued for groups instead (see _accept_validate and _accept_place)
        self._handlers: dict[str, Handler] = {
            "release": self._release,
            "status": self._status,
            "can_allocate": self._can_allocate,
            "defaults": self._defaults,
            "image_pull_check": self._image_pull_check,
            "hosts": self._hosts,
            "candidates": self._candidates,
            "running_instances": self._running_instances,
            "reservation": self._reservation,
        }
        assert {*self._handlers, "validate", "place"} == set(ENDPOINTS)

    async def start(self) -> None:
        self._groupers = [
            asyncio.create_task(self._admit_groups()),
            asyncio.create_task(self._place_groups()),
        ]
        self._service = await add_service(
            self.nc,
            name=SERVICE_NAME,
            version=__version__,
            description="Host-capacity ledger: validate (= reserve), release, status and checks",
            queue_group=QUEUE_GROUP,
        )
        group = self._service.add_group(name=PREFIX, queue_group=QUEUE_GROUP)
        for name in ENDPOINTS:
            queued = {"validate": self._accept_validate, "place": self._accept_place}
            handler = queued.get(name) or self._accept(name)
            await group.add_endpoint(name=name, handler=handler)
        # the endpoints' SUBs are only buffered so far: until the server has them, a request finds no
        # responder, and whoever waits for `ledger serve` to be ready would be told too early
        await self.nc.flush()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking requests, then let the ones in flight finish and answer.

        The endpoints' subscriptions are drained first: a plain unsubscribe (what the micro API's stop does)
        would drop requests the client library has already received but not yet handed to us.
        """
        self._busy_poll.stop()  # the replies still to come are the last: nothing follows them
        if self._service is not None:
            # nats-py's micro API has no drain of its own: drain each endpoint's subscription, then let
            # stop() remove only the $SRV discovery subscriptions
            endpoints = getattr(self._service, "_endpoints", [])
            for endpoint in endpoints:
                subscription = getattr(endpoint, "_subscription", None)
                if subscription is not None:
                    with contextlib.suppress(Exception):
                        await subscription.drain()
            self._service._endpoints = []
            with contextlib.suppress(Exception):  # NATS down: there is nothing left to tell it
                await self._service.stop()
            self._service = None
        await asyncio.sleep(0)  # let the drained messages' callbacks create their tasks
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        for queue in (self._validates, self._places):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.wait_idle(), timeout)
        for grouper in self._groupers:
            grouper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await grouper
        await self.ledger.aclose()
        self._pool.shutdown(wait=True)
        self._admission_thread.shutdown(wait=True)

    async def _accept_validate(self, request: Request) -> None:
        """Parse and check the request here, then queue it for the next group (the reply comes from there).

        Returns at once unless `max_inflight` validates are already waiting: then the endpoint stops taking
        messages until there is room, and NATS buffers them.
        """
        started = time.perf_counter()
        try:
            hold = self._validate_args(parse_request("validate", request.data))
        except LedgerError as exc:
            await self._reply(request, "validate", started, error=exc)
            return
        await self._validates.put((request, hold, started))

    async def _accept_place(self, request: Request) -> None:
        """Parse and check a place here, then queue it for the next group (as `_accept_validate` does)."""
        started = time.perf_counter()
        try:
            call = self._place_args(parse_request("place", request.data))
        except LedgerError as exc:
            await self._reply(request, "place", started, error=exc)
            return
        except Exception:
            log.exception("place failed")
            await self._reply(request, "place", started, error=_internal_error())
            return
        await self._places.put((request, call, started))

    async def _admit_groups(self) -> None:
        """Admit everything waiting (up to max_group) in one transaction, answer each, repeat.

        On SQLite the group runs right here on the event loop when the write lock is free: it is a few local
        statements, cheaper than the two thread hops it would take to run it elsewhere. On PostgreSQL a lone
        request that fits is granted by one statement on an async connection, awaited here. Anything else
        (the SQLite lock taken by the event consumer's batch or another process; a PostgreSQL group or a
        lone request that does not fit) runs on the admission thread.
        """
        while True:
            group = await self._validates.take(self.max_group)
            asks = [ask for _, ask, _ in group]
            try:
                outcomes = await self._admit(asks)
            except Exception:  # one bad ask must not decide its neighbours' answers: each alone
                log.exception("a group of %d validates failed; admitting each on its own", len(asks))
                outcomes = [await self._admit_alone(ask) for ask in asks]
            await self._reply_each("validate", group, outcomes)
            # a lone caller is likely waiting to send its next request; with several the loop stays busy,
            # and polling would take their core
            if self._validates.answered() and len(group) == 1:
                self._busy_poll.after_reply()

    async def _reply_each(
        self, endpoint: str, group: list[tuple[Request, Any, float]], outcomes: list[Grant | LedgerError]
    ) -> None:
        """Answer each request of a group with its grant or refusal."""
        for (request, _, started), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, LedgerError):
                await self._reply(request, endpoint, started, error=outcome)
            else:
                await self._reply(request, endpoint, started, grant_reply(outcome))

    async def _admit(self, asks: list[HostAsk]) -> list[Grant | LedgerError]:
        """Where a group is admitted (the decision and the rows are the same everywhere): on SQLite right
        here when the write lock is free; on PostgreSQL in one round trip on the loop's own connection when
        the host is as this process last saw it; otherwise on the admission thread."""
        outcomes = self.ledger.try_reserve_many(asks)
        tried = False
        if outcomes is None:
            outcomes, tried = await self.ledger.try_reserve_many_async(asks)
        if outcomes is None:
            admit = functools.partial(self.ledger.reserve_many, asks, optimistic=not tried)
            outcomes = await asyncio.get_running_loop().run_in_executor(self._admission_thread, admit)
        return outcomes

    async def _admit_alone(self, ask: HostAsk) -> Grant | LedgerError:
        try:
            return (await self._admit([ask]))[0]
        except LedgerError as exc:
            return exc
        except Exception:
            log.exception("validate failed")
            return _internal_error()

    async def _place_groups(self) -> None:
        """Place everything waiting (up to max_group) as one group on a pool thread, answer each, repeat."""
        loop = asyncio.get_running_loop()
        while True:
            group = await self._places.take(self.max_group)
            calls = [call for _, call, _ in group]
            try:
                outcomes = await loop.run_in_executor(self._pool, self.ledger.place_many, calls)
            except Exception:  # one bad call must not decide its neighbours' answers: each alone
                log.exception("a group of %d places failed; placing each on its own", len(calls))
                outcomes = [await loop.run_in_executor(self._pool, self._place_alone, call) for call in calls]
            await self._reply_each("place", group, outcomes)
            if self._places.answered() and len(group) == 1:
                self._busy_poll.after_reply()

    def _place_alone(self, call: PlaceCall) -> Grant | LedgerError:
        try:
            return self.ledger.place_many([call])[0]
        except LedgerError as exc:
            return exc
        except Exception:
            log.exception("place failed")
            return _internal_error()

    def _nothing_in_flight(self) -> bool:
        idle = self._validates.idle and self._places.idle
        return idle and not self._inflight and self._background_idle()

    def _accept(self, endpoint: str) -> Callable[[Request], Any]:
        async def accept(request: Request) -> None:
            task = asyncio.create_task(self._answer(endpoint, request))
            self._inflight.add(task)
            task.add_done_callback(self._answered)

        return accept

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._busy_poll.after_reply()

    async def _answer(self, endpoint: str, request: Request) -> None:
        started = time.perf_counter()
        await self._slots.acquire()  # at most max_inflight in the database path; the rest wait here
        try:
            try:
                body = parse_request(endpoint, request.data)
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, self._handlers[endpoint], body)
                reply = ok(result)
            except LedgerError as exc:
                await self._reply(request, endpoint, started, error=exc)
                return
            except Exception:
                log.exception("%s failed", endpoint)
                await self._reply(request, endpoint, started, error=_internal_error())
                return
            await self._reply(request, endpoint, started, reply)
        finally:
            self._slots.release()

    async def _reply(
        self,
        request: Request,
        endpoint: str,
        started: float,
        body: bytes = b"",
        *,
        error: LedgerError | None = None,
    ) -> None:
        """Send the one reply `request` gets: `body`, or `error` as an error reply. A body the connection
        cannot carry (over the server's max_payload) becomes an error reply saying how to ask for less.
        Every reply passes here, so this is where requests are counted and timed (from `started`)."""
        limit = self.nc.max_payload - REPLY_HEADROOM
        if error is None and len(body) > limit:
            hint = (
                "ask for a page of the allocations with `limit` and `after`"
                if endpoint == "status"
                else "ask for less"
            )
            error = InvalidRequest(
                f"the reply would be {len(body)} bytes, more than this NATS server carries in one message "
                f"({self.nc.max_payload} bytes): {hint}",
                field="limit" if endpoint == "status" else None,
            )
        try:
            if error is None:
                await request.respond(body)
            else:
                code, description, data = error_reply(error)
                await request.respond_error(code, description, data=data)
        except Exception as exc:  # the requester may have gone, or NATS with it: nothing to undo
            log.warning("could not send a reply (%s: %s)", type(exc).__name__, exc)
        self.metrics.observe(endpoint, time.perf_counter() - started, error)

    def _host(self, body: dict[str, Any]) -> str:
        host = body.get("host") or self.default_host
        if not host:
            raise InvalidRequest("host is required: this service serves more than one host", field="host")
        return str(host)

    # ---- endpoint bodies (run in the thread pool) ---------------------------------------------

    def _validate_args(self, body: dict[str, Any]) -> HostAsk:
        request = ValidateRequest.from_body(body)
        return self._host(body), Ask(request.allocation, request.idempotency_key, request.ttl_seconds)

    def _release(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.ledger.release(body["reservation_id"]).to_dict()

    def _reservation(self, body: dict[str, Any]) -> dict[str, Any]:
        by_id, key = reservation_lookup(body)
        if by_id is not None:
            return self.ledger.reservation(by_id).to_dict()
        assert key is not None
        return self.ledger.reservation_by_key(self._host(body), key).to_dict()

    def _status(self, body: dict[str, Any]) -> dict[str, Any]:
        host = self._host(body)
        limit = body.get("limit", DEFAULT_STATUS_LIMIT)
        if isinstance(limit, bool) or not 0 <= limit <= MAX_PAGE:  # parse_request made it an integer
            raise InvalidRequest(f"limit must be a whole number from 0 to {MAX_PAGE}", field="limit")
        resource = resource_field(body)
        if resource is not None:
            return {"host": host, **self.ledger.status(host, resource).to_dict()}
        if not body.get("allocations", True):
            limit = 0
        return self.ledger.full_status(host, limit=limit, after=body.get("after")).to_dict()

    def _can_allocate(self, body: dict[str, Any]) -> dict[str, Any]:
        amount = check_amount("amount", body["amount"])
        resource = resource_field(body)
        assert resource is not None
        host = self._host(body)
        status = self.ledger.status(host, resource)
        return {
            "host": host,
            "resource": resource.value,
            "can_allocate": amount <= status.available,
            "available": status.available,
        }

    def _defaults(self, body: dict[str, Any]) -> dict[str, Any]:
        host = self._host(body)
        values = self.ledger.default_bandwidth(host, body["vcpus"], burst_multiplier=self.burst)
        return {"host": host, "vcpus": body["vcpus"], **values}

    def _image_pull_check(self, body: dict[str, Any]) -> dict[str, Any]:
        host = self._host(body)
        return {"host": host, **self.ledger.image_pull_check(host, self.max_image_storage)}

    def _hosts(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"hosts": self.ledger.host_ids()}

    def _running_instances(self, body: dict[str, Any]) -> dict[str, Any]:
        host = self._host(body)
        return {"host": host, "instances": [i.to_dict() for i in self.ledger.running_instances(host)]}

    def _candidates(self, body: dict[str, Any]) -> dict[str, Any]:
        search = SearchRequest.from_body(body, count="limit", default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        found = self.ledger.candidates(
            allocation_request(body),
            labels=search.labels,
            exclude=search.exclude_hosts,
            policy=search.policy,
            limit=search.limit,
        )
        return found.to_dict()

    def _place_args(self, body: dict[str, Any]) -> PlaceCall:
        search = SearchRequest.from_body(
            body, count="attempts", default=DEFAULT_ATTEMPTS, maximum=MAX_ATTEMPTS
        )
        ask = Ask(allocation_request(body), body.get("idempotency_key"), body.get("ttl_seconds"))
        return PlaceCall(ask, search.labels, search.exclude_hosts, search.policy, search.limit)


def _internal_error() -> LedgerError:
    """What a caller is told when the service failed in a way it did not foresee (the log has the rest)."""
    return LedgerError("internal error; see the ledger service's log")
