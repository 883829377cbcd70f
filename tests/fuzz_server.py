"""`python -m tests.fuzz_server PORT`: the real app served by uvicorn, with a FakeProvider as its only model.

The fuzz tests' server (tests/test_fuzz_api.py): a real process on a real socket, so requests go through the HTTP
parser, the middlewares and the database exactly as in production, while model turns run whole and instantly.
Settings come from the environment (THREADLINE_DATABASE_URL…), as for `threadline serve`.
"""

from __future__ import annotations

import sys

import uvicorn

from threadline.api.app import create_app
from threadline.config import Settings
from threadline.providers.fake import FakeProvider
from threadline.providers.registry import ModelRegistry


def main(port: int) -> None:
    registry = ModelRegistry()
    registry.register(FakeProvider())
    uvicorn.run(create_app(Settings(), models=registry), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]))
