"""The transport under the upstream `httpx.AsyncClient`: aiohttp's connection pool and C parser.

httpx's own transport (httpcore, h11, anyio streams) cost ~3 ms of CPU per streamed chat completion here, about
four times the model turn's whole budget for it; through aiohttp the same request costs ~1 ms (bench/README.md).
The client keeps httpx's API, so providers and tests (`httpx.MockTransport`) are unchanged, and an environment
proxy still goes through httpx's proxy transport (httpx mounts it per URL pattern).

`httpx-aiohttp` exists, but maps every aiohttp connection error to `httpx.ConnectTimeout`: a refused
connection or a server that hangs up would read as a timeout (504) instead of an unavailable upstream (502).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar
from typing import Any

import aiohttp
import httpx

from threadline import tls


def upstream_client() -> httpx.AsyncClient:
    """The one HTTP client of a process for every upstream model call; per-provider timeouts override these."""
    context = tls.client_context(trust_env=True)
    client = httpx.AsyncClient(
        transport=AiohttpTransport(context, max_connections=200),
        verify=context,  # for the proxy transports httpx mounts from the environment
        timeout=httpx.Timeout(120.0, connect=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )
    # Set in place: httpx copies a `Cookies` given to it into a plain one (its jar given instead, httpx would
    # still wrap every response and its request in urllib's shapes for the jar, ~13 µs a call).
    client._cookies = _NoCookieStore()
    return client


_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class _NoCookies(CookieJar):
    """Keeps no cookie. One client serves every organization and every provider, and they authenticate by header:
    a cookie an upstream sets (api.openai.com sets Cloudflare's on every answer, a gateway may set a session) must
    not go back with another caller's request. Nothing is parsed either."""

    def extract_cookies(self, *_: Any) -> None:
        return None


class _NoCookieStore(httpx.Cookies):
    """The upstream client's cookies: the `_NoCookies` jar, and nothing read from a response. (Should httpx stop
    reading its `_cookies`, `test_cookies_an_upstream_sets_are_never_sent_back` fails.)"""

    def __init__(self) -> None:
        super().__init__(_NoCookies())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, ssl_context: ssl.SSLContext, *, max_connections: int, keepalive_seconds: float = 5.0) -> None:
        self._ssl = ssl_context
        self._limit = max_connections
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit, keepalive_timeout=self._keepalive)
            # No cookie jar here either (`_NoCookies`).
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        with _as_httpx_errors(request):
            response = await self._client().request(
                request.method,
                str(request.url),
                # aiohttp frames the body itself, and httpx decodes what `Accept-Encoding` brings back.
                headers=[(k, v) for k, v in request.headers.multi_items() if k.lower() not in _FRAMING],
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"), sock_read=timeout.get("read"), connect=timeout.get("pool")
                ),
            )
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._response is None:
            raise httpx.StreamClosed()
        with _as_httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end; otherwise aiohttp closes the connection. Then let go
        # of aiohttp's response: httpx's response and its stream refer to each other (a cycle the garbage
        # collector frees), and what they hold waits with them (~20 objects a call).
        response, self._response = self._response, None
        if response is not None:
            response.release()


class _as_httpx_errors:
    """aiohttp's exceptions as the httpx ones the providers handle (a timeout, a connection that could not be
    made, one that broke)."""

    def __init__(self, request: httpx.Request) -> None:
        self._request = request

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise httpx.ConnectTimeout(str(exc), request=self._request) from exc
        if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
            raise httpx.ReadTimeout(str(exc) or "timed out", request=self._request) from exc
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise httpx.ConnectError(str(exc), request=self._request) from exc
        if isinstance(exc, aiohttp.ClientError):
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=self._request) from exc
