"""Basic auth and security headers, as plain ASGI middleware."""

from __future__ import annotations

import base64
import hmac
from typing import Any

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


async def add_security_headers(message: Any, scope: Any) -> None:
    """Litestar ``before_send`` hook: every response, error pages included, carries these headers."""
    if message["type"] == "http.response.start":
        message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]


class BasicAuth:
    """HTTP basic auth for every path except /healthz (load balancers probe it without credentials)."""

    def __init__(self, app: Any, credentials: str) -> None:
        self.app = app
        self.expected = b"Basic " + base64.b64encode(credentials.encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(supplied, self.expected):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="TaskLib", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"Authentication required.\n"})
