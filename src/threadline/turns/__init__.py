"""The turn engine: one model turn on a thread, whichever surface asks for it (docs/ARCHITECTURE.md).

- `request.py` — `TurnRequest`: what a surface asks (validated, snake_case);
- `start.py` — the start, one short transaction: the lease (`lease.py`), the context plan (`context.py`), the
  turn recorded `in_progress`;
- `run.py` — the model call with no session open, a heartbeat renewing the lease;
- `save.py` — the save, one short transaction: inputs and output together, or the failure;
- `record.py` — the stored record, read as `domain.turns.StoredTurn` by every surface;
- `engine.py` — `TurnEngine`, built once at start-up, which the surfaces call;
- `stored.py`, `runs.py` — stored turns afterwards (read, delete, input items; Assistants runs);
- `naming.py` — thread titles, asked of the model as turns of their own.
"""
