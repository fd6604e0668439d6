"""The validate reply written by one format is the one `ok(grant.to_dict())` writes, byte for byte: any
host, key (quotes, backslashes, control characters, non-ASCII), time zone, replay flag and charge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ledger.bus.protocol import grant_reply, ok
from ledger.core.charges import BANDWIDTH_FIELDS, Charge
from ledger.core.results import Grant
from ledger.core.units import MAX_AMOUNT

text = st.text(min_size=1, max_size=40)
zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])


@given(
    text,
    text,
    st.sampled_from(["held", "consumed", "released", "expired"]),
    st.datetimes(timezones=zones),
    st.none() | text,
    st.booleans(),
    st.builds(
        Charge,
        *[st.integers(0, MAX_AMOUNT)] * 6,
        st.integers(0, 1),
        st.none() | text,
        st.lists(st.sampled_from(BANDWIDTH_FIELDS), unique=True).map(tuple),
    ),
)
def test_grant_reply_is_what_the_json_encoder_writes(
    rid: str, host: str, status: str, expires_at: datetime, key: str | None, replayed: bool, charge: Charge
) -> None:
    grant = Grant(rid, host, status, expires_at, key, charge, replayed)
    assert grant_reply(grant) == ok(grant.to_dict())
    assert json.loads(grant_reply(grant))["idempotency_key"] == key
