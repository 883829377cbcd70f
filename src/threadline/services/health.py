"""Readiness: the database answers and its schema is at the migration this code ships with."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from threadline.storage.engine import schema_revision

logger = logging.getLogger("threadline.health")


@dataclass(frozen=True)
class Readiness:
    database: bool
    revision: str | None
    head: str | None

    @property
    def ready(self) -> bool:
        return self.database and self.revision == self.head

    def as_dict(self) -> dict[str, object]:
        if not self.database:
            status = "database_unavailable"
        elif self.revision != self.head:
            status = "migrations_pending"
        else:
            status = "ready"
        return {"status": status, "database": self.database, "revision": self.revision, "head": self.head}


async def readiness(engine: AsyncEngine, head: str | None) -> Readiness:
    try:
        revision = await schema_revision(engine)
    except Exception as exc:
        # The reason goes to the log (once per failed probe), not to the unauthenticated caller.
        logger.warning("readiness: the database does not answer: %s", type(exc).__name__)
        return Readiness(database=False, revision=None, head=head)
    return Readiness(database=True, revision=revision, head=head)
