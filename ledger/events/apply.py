"""Applying a parsed event to the ledger: each type maps onto one store write, marked with the event id so a
redelivery is a no-op and versioned so a stale or reordered event is ignored."""

from __future__ import annotations

from ledger.core.records import ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.results import ApplyResult
from ledger.events.contract import Event
from ledger.store.ledger import EventMark, Ledger


def apply_event(ledger: Ledger, event: Event, stream_seq: int | None = None) -> ApplyResult:
    """Apply `event` in one transaction and say what it did: `applied`, `stale` or `duplicate`.

    Database trouble raises Unavailable (retry later); a parsed event raises nothing else.
    """
    mark = EventMark(event.id, event.type, stream_seq)
    record = event.record
    deleted = event.action == "deleted"
    if isinstance(record, InstanceRecord):
        if deleted:
            return ledger.delete_instance(event.host, record.id, version=event.version, mark=mark)
        return ledger.apply_instance(
            event.host, record, version=event.version, action=event.action, mark=mark
        )
    if isinstance(record, VolumeRecord):
        if deleted:
            return ledger.delete_volume(event.host, record.id, version=event.version, mark=mark)
        return ledger.apply_volume(event.host, record, version=event.version, action=event.action, mark=mark)
    if isinstance(record, ImageRecord):
        if deleted:
            return ledger.delete_image(event.host, record.id, version=event.version, mark=mark)
        return ledger.apply_image(event.host, record, version=event.version, mark=mark)
    if isinstance(record, OciCacheRecord):
        return ledger.apply_oci_cache(event.host, record, version=event.version, mark=mark)
    return ledger.register_host(
        event.host,
        record.capacities,
        record.ratios,
        record.gpu,
        labels=record.labels,
        version=event.version,
        mark=mark,
    )
