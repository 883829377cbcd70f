"""PostgreSQL for the async engine: SQLAlchemy's asyncpg dialect with a one-round-trip pool check
(docs/storage.md, "PostgreSQL").

The pool checks each connection for life before lending it (a server restart must not fail the next requests).
SQLAlchemy's asyncpg check wraps its empty statement in BEGIN … ROLLBACK, for pgbouncer's transaction mode: three
round trips at every checkout, and a turn checks out three times. Threadline cannot run behind that mode anyway
(LISTEN, prepared statements), so the check is the empty statement alone, as SQLAlchemy sends it on an autocommit
connection.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.util.concurrency import await_

DRIVER = "threadline_asyncpg"


class OneTripPingDialect(PGDialect_asyncpg):
    supports_statement_cache = True

    def do_ping(self, dbapi_connection: Any) -> bool:
        try:
            await_(dbapi_connection._connection.fetchrow(";"))
        except Exception as error:
            dbapi_connection._handle_exception(error)  # as SQLAlchemy's own check: tells a lost connection apart
        return True


registry.register(f"postgresql.{DRIVER}", __name__, "OneTripPingDialect")
