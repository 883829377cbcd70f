"""A webhook receiver process: records every delivery and answers with the statuses it is told to.

Run: python tests/webhook_receiver.py --port N. `POST /hook` (any path under /hook) is the endpoint: it keeps the
raw body and headers and answers the next status queued by `POST /_script {"statuses": [500, 500]}` (200 once
the queue is empty); `/redirect` answers 307 to /hook. `GET /_received` lists what came, `POST /_reset` forgets it.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_received: list[dict[str, object]] = []
_statuses: list[int] = []


async def hook(request: Request) -> Response:
    body = await request.body()
    _received.append(
        {
            "path": request.url.path,
            "body": body.decode(),
            "headers": dict(request.headers),
        }
    )
    status = _statuses.pop(0) if _statuses else 200
    return Response(f"answered {status} " + "x" * 2000, status_code=status)


async def redirect(_: Request) -> Response:
    return Response(status_code=307, headers={"location": "/hook"})


async def script(request: Request) -> Response:
    _statuses.extend(int(status) for status in (await request.json())["statuses"])
    return JSONResponse({"queued": len(_statuses)})


async def received(_: Request) -> Response:
    return JSONResponse(_received)


async def reset(_: Request) -> Response:
    _received.clear()
    _statuses.clear()
    return JSONResponse({"reset": True})


async def health(_: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/hook", hook, methods=["POST"]),
        Route("/hook/{rest:path}", hook, methods=["POST"]),
        Route("/redirect", redirect, methods=["POST"]),
        Route("/_script", script, methods=["POST"]),
        Route("/_received", received),
        Route("/_reset", reset, methods=["POST"]),
        Route("/healthz", health),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
