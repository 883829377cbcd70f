"""Wire shapes of imports (an export is JSON Lines, docs/export-format.md)."""

from __future__ import annotations

from typing import Any

from threadline.api.schemas.common import ResponseModel
from threadline.services.thread_import import ImportReport


class ImportRead(ResponseModel):
    """Counts of threads: `created`, `skipped` (imported before from the same source), `failed`; `errors` say
    which line (or conversation) failed and why; `warnings` what a source held that was not imported;
    `thread_ids` are the created and skipped threads in file order."""

    created: int
    skipped: int
    failed: int
    errors: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    thread_ids: list[str]

    @classmethod
    def of(cls, report: ImportReport) -> ImportRead:
        return cls(
            created=report.created,
            skipped=report.skipped,
            failed=report.failed,
            errors=report.errors,
            warnings=report.warnings,
            thread_ids=report.thread_ids,
        )
