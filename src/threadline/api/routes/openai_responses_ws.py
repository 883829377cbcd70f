"""The Responses API over one WebSocket (`client.responses.connect()`): `wss://…/v1/responses`.

- The handshake authenticates as HTTP does (`Authorization: Bearer …` or `X-API-Key`, `?organization_id=`); a
  refused credential is answered with the HTTP error itself (401/403/429 and the envelope), no socket is opened.
- Each `response.create` message carries the body of `POST /v1/responses` (same fields, same rules, counted
  against the credential's requests per minute like a request); `stream` is implicit. The answer is the same
  events the SSE stream sends, one JSON message each, in order; a `stream_id` is echoed on each of its events.
- Requests run one at a time, in the order they arrive; a continuation names the previous response with
  `previous_response_id` (Threadline keeps every response, so any completed one continues, `store` or not).
- A request refused before the model is called is an `error` event (`{"type": "error", "status", "error":
  {type, code, message, param}}`) and the socket stays open; a turn that fails midway ends in `response.failed`
  as on HTTP. Unsupported client events (`response.steer`) and `generate: false` (warm-up) are error events too.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from threadline.api.deps import authenticate
from threadline.api.errors import error_body, error_response, status_of, validation_error_body
from threadline.api.routes.openai_responses import openai_names, stream_frames
from threadline.api.schemas.openai_responses import OpenAIResponseCreate
from threadline.api.sse import EventFramer
from threadline.errors import InvalidRequest, ThreadlineError
from threadline.services.auth import Principal
from threadline.turns.engine import TurnEngine

router = APIRouter(prefix="/v1/responses", tags=["openai-responses"])


@router.websocket("")
async def responses_socket(websocket: WebSocket) -> None:
    maker = websocket.app.state.sessionmaker
    try:
        handshake = await authenticate(websocket, maker)
        handshake.organization(websocket.query_params.get("organization_id"))
    except ThreadlineError as exc:
        await websocket.send_denial_response(error_response(exc))
        return
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            await _serve(websocket, message)
    except WebSocketDisconnect:
        return


async def _serve(websocket: WebSocket, message: str) -> None:
    """One client event: a response's events, or one `error` event."""
    stream_id: Any = None
    try:
        event = _client_event(message)
        stream_id = event.pop("stream_id", None)
        # Each request authenticates again: it counts against the requests per minute like an HTTP request.
        principal = await authenticate(websocket, websocket.app.state.sessionmaker)
        await _create(websocket, principal, event, stream_id)
    except ThreadlineError as exc:
        status, type_ = status_of(exc)
        await _send(
            websocket,
            {"type": "error", "status": status, **error_body(exc.message, type_, exc.code, exc.param)},
            stream_id,
        )
    except ValidationError as exc:
        await _send(websocket, {"type": "error", "status": 400, **validation_error_body(exc.errors())}, stream_id)


def _client_event(message: str) -> dict[str, Any]:
    try:
        event = json.loads(message)
    except ValueError as exc:
        raise InvalidRequest("The message is not valid JSON.", code="invalid_json") from exc
    if not isinstance(event, dict):
        raise InvalidRequest("A client event is a JSON object with a 'type'.", code="invalid_type", param="type")
    kind = event.pop("type", None)
    if kind == "response.steer":
        raise InvalidRequest(
            "Steering is not supported: send a new 'response.create' once the response is done.",
            code="unsupported_event_type",
            param="type",
        )
    if kind != "response.create":
        raise InvalidRequest(
            f"Unknown client event type '{kind}': Threadline takes 'response.create'.",
            code="invalid_event_type",
            param="type",
        )
    if event.pop("generate", True) is False:
        raise InvalidRequest(
            "'generate: false' (warming up a response without generating) is not supported: send the request "
            "when it should be answered.",
            code="unsupported_parameter",
            param="generate",
        )
    if event.get("background"):
        raise InvalidRequest(
            "'background: true' is not supported over the WebSocket: the socket is the stream. Create background "
            "responses over HTTP (POST /v1/responses) and follow them with GET /v1/responses/{id}?stream=true.",
            code="unsupported_parameter",
            param="background",
        )
    event.pop("stream", None)  # implicit: a WebSocket answer is always the stream
    return event


async def _create(websocket: WebSocket, principal: Principal, event: dict[str, Any], stream_id: Any) -> None:
    turns: TurnEngine = websocket.app.state.turns
    body = OpenAIResponseCreate.model_validate(event)
    with openai_names():
        request = body.to_request(principal.organization(websocket.query_params.get("organization_id")))
        turn = await turns.start(principal, request)
    async for text in stream_frames(turns.run(turn), turn, SocketFramer(stream_id)):
        await websocket.send_text(text)


class SocketFramer(EventFramer):
    """Each event as one WebSocket message: its JSON itself, with the client's `stream_id` when it sent one."""

    def __init__(self, stream_id: Any) -> None:
        super().__init__()
        self.stream_id = stream_id

    def frame(self, name: str, payload: dict[str, Any]) -> str:
        return self.encode(name, payload if self.stream_id is None else {**payload, "stream_id": self.stream_id})


async def _send(websocket: WebSocket, data: dict[str, Any], stream_id: Any) -> None:
    await websocket.send_text(json.dumps(data if stream_id is None else {**data, "stream_id": stream_id}))
