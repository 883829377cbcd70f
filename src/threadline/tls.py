"""The TLS settings of outgoing HTTP clients (upstream models, webhook deliveries)."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def client_context(*, trust_env: bool) -> ssl.SSLContext:
    """httpx's default context (certifi's CA bundle; `SSL_CERT_FILE` / `SSL_CERT_DIR` when `trust_env`), built
    once per process: httpx would load the bundle again for every client, ~35 ms of CPU each (an app builds two)."""
    return httpx.create_ssl_context(trust_env=trust_env)
