"""Who may change the index through the service: nobody unless a token is configured, then only a request
that carries it (`Authorization: Bearer <token>`, compared in constant time) and does not come from another
site's page (CSRF: a foreign `Origin` is refused even with the token).

Checked in ASGI middleware, before the request body is read: a refused upload costs nothing. Searches stay
open (they change nothing and other sites cannot read their answers: the service sends no CORS headers).
The Host header is checked separately, for every request (starlette's TrustedHostMiddleware, against DNS
rebinding).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from attnhash.errors import ConfigError

__all__ = ["WriteGuardMiddleware", "load_token", "TOKEN_ENV", "LOOPBACK_HOSTS", "is_write"]

TOKEN_ENV = "ATTNHASH_TOKEN"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_WRITE_PREFIX = "/api/items"
_READ_METHODS = ("GET", "HEAD", "OPTIONS")


def load_token(token_file: str | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The write token: the content of `token_file` (surrounding white space dropped), else the environment
    variable ATTNHASH_TOKEN, else None (writes off). ConfigError for an unreadable or empty file."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"token file {token_file}: cannot read it ({getattr(err, 'strerror', None) or err})") \
                from None
        if not token:
            raise ConfigError(f"token file {token_file} is empty")
        _check_token(token, f"token file {token_file}")
        return token
    token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    if token:
        _check_token(token, TOKEN_ENV)
    return token or None


def _check_token(token: str, where: str) -> None:
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ConfigError(f"{where}: the token must be one word of printable characters")


def is_write(method: str, path: str) -> bool:
    return method not in _READ_METHODS and (path == _WRITE_PREFIX or path.startswith(_WRITE_PREFIX + "/"))


class WriteGuardMiddleware:
    """Refuses writes (see the module docstring): 403 when writes are off or the Origin is foreign, 401
    without the right token."""

    def __init__(self, app, token: str | None, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.refused = 0

    async def _refuse(self, send, status: int, detail: str) -> None:
        self.refused += 1
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="attnhash"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _foreign(self, headers: dict[bytes, bytes]) -> str | None:
        """Why the request comes from another site's page, or None."""
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip().lower()
            if text.rstrip("/") in self.allowed_origins:
                return None
            host = headers.get(b"host", b"").decode("latin-1").lower()
            parts = urlsplit(text)
            if text == "null" or parts.scheme not in ("http", "https") or parts.netloc != host:
                return f"a page of {origin.decode('latin-1')!r}"
            return None
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        if site in ("cross-site", "same-site"):  # a browser that did not send Origin
            return f"a {site} page"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not is_write(scope["method"], scope.get("path", "")):
            return await self.app(scope, receive, send)
        if self._token is None:
            return await self._refuse(send, 403, "writes are disabled: start the service with a token "
                                      f"({TOKEN_ENV} or --token-file FILE) to add or remove items")
        headers = dict(scope["headers"])
        why = self._foreign(headers)
        if why is not None:
            return await self._refuse(send, 403, f"writes from {why} are refused (cross-site request); "
                                      "allow an origin with --allowed-origins")
        auth = headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            return await self._refuse(send, 401, "this write needs the service's token: "
                                      "Authorization: Bearer <token>" if not auth else "wrong token")
        return await self.app(scope, receive, send)
