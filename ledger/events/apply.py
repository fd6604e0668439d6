"""Applying parsed events to the ledger: each event becomes one entity change (or a host registration),
marked with its event id so a redelivery is a no-op and versioned so a stale or reordered event is ignored."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.core.results import ApplyResult
from ledger.events.contract import Event, HostCapacityRecord
from ledger.store.ledger import Change, EventMark, Ledger


def apply_event(ledger: Ledger, event: Event, stream_seq: int | None = None) -> ApplyResult:
    """Apply `event` in one transaction and say what it did: `applied`, `stale` or `duplicate`.

    Database trouble raises Unavailable (retry later); a parsed event raises nothing else.
    """
    return apply_events(ledger, [(event, stream_seq)])[0]


def apply_events(ledger: Ledger, events: Sequence[tuple[Event, int | None]]) -> list[ApplyResult]:
    """Apply events in order (in the current batch's transaction, if any): runs of entity changes together,
    each `host.capacity` on its own between them, since a host's capacities decide what its instances'
    default bandwidths are charged."""
    results: list[ApplyResult] = []
    run: list[Change] = []
    for event, seq in events:
        mark = EventMark(event.id, event.type, seq)
        record = event.record
        if isinstance(record, HostCapacityRecord):
            results += ledger.apply(run) if run else []
            run = []
            results.append(
                ledger.register_host(
                    event.host,
                    record.capacities,
                    record.ratios,
                    record.gpu,
                    labels=record.labels,
                    version=event.version,
                    mark=mark,
                )
            )
            continue
        deleted = event.action == "deleted"
        entity_id = event.host if event.kind == "oci_cache" else getattr(record, "id", event.host)
        run.append(
            Change(
                event.host,
                event.kind,
                entity_id,
                None if deleted else record,
                event.version,
                event.action,
                mark,
            )
        )
    results += ledger.apply(run) if run else []
    return results
