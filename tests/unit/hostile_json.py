"""Hypothesis strategies for JSON text a hostile or careless sender might write: unpaired surrogates and NUL
in keys and values, huge and non-finite numbers, repeated keys, deep nesting."""

from __future__ import annotations

import json
from collections.abc import Sequence

from hypothesis import strategies as st

# Any character, unpaired surrogates and NUL included.
any_text = st.text(st.characters(exclude_categories=()), max_size=8)

NUMBERS = ["0", "-1", "2", "2.0", "2.5", "1e3", "1e400", "-1e400", "1" + "0" * 40, "9" * 400, "1e-400"]
CONSTANTS = ["null", "true", "false", "NaN", "Infinity", "-Infinity"]


def quote(text: str) -> str:
    """`text` as a JSON string literal; a surrogate becomes a `\\ud800` escape, NUL `\\u0000`."""
    return json.dumps(text)


def json_texts(keys: Sequence[str] = ("a", "b")) -> st.SearchStrategy[str]:
    """JSON text, mostly well-formed, with objects drawing their keys (often repeated) from `keys`."""
    key = st.sampled_from([quote(k) for k in keys]) | any_text.map(quote)
    return st.recursive(
        st.one_of(
            st.sampled_from(NUMBERS + CONSTANTS),
            st.integers(min_value=-(10**35), max_value=10**35).map(str),
            st.floats()
            .map(repr)
            .map(lambda r: {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(r, r)),
            any_text.map(quote),
        ),
        lambda inner: (
            st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
            | st.lists(st.tuples(key, inner), max_size=4).map(
                lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
            )
            | st.tuples(st.integers(min_value=0, max_value=40), inner).map(
                lambda nested: "[" * nested[0] + nested[1] + "]" * nested[0]
            )
        ),
        max_leaves=8,
    )


def json_objects(keys: Sequence[str]) -> st.SearchStrategy[str]:
    """A JSON object over `keys` whose values are any of `json_texts`."""
    member = st.tuples(st.sampled_from([quote(k) for k in keys]), json_texts(keys))
    return st.lists(member, max_size=5).map(lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}")
