"""Time-sortable ids with readable prefixes (`thread_…`, `msg_…`, `resp_…`, `asst_…`, `org_…`, `usr_…`).

Layout after the prefix: 10 base32 characters of milliseconds since the epoch, then 16 random ones, so ids
generated later sort later (Crockford alphabet keeps lexical order equal to numeric order).
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

# Caller-chosen ids (docs/freddy-spec.md: `support_user123_ticket789`): letters, digits, `_`, `-`, `.`, `:`.
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A new id such as `thread_01jd4m3k7x8q2w9e5r1t6y3u4i`."""
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(millis, 10)}{_encode(secrets.randbits(80), 16)}"


def sibling_id(prefix: str, source_id: str) -> str:
    """The id of a row that belongs one-to-one to `source_id`, known before it exists: a response's answer is
    `msg_<the response id's suffix>` (the OpenAI output item can name it while it is still being generated)."""
    return f"{prefix}_{source_id.partition('_')[2]}"


def is_valid_client_id(value: str) -> bool:
    # fullmatch: `$` alone would also accept a trailing newline.
    return bool(CLIENT_ID_PATTERN.fullmatch(value))
