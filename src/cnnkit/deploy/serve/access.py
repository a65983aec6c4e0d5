"""Who may call the service: an optional bearer token, where it comes from, and the origins allowed by CORS.

With a token, every request except ``GET /health`` (a load balancer's liveness probe)
needs ``Authorization: Bearer <token>``; anything else gets 401 before its body is read.
A browser cannot add that header when it opens a page, so the two pages (``/``, the
web page, and ``/docs``, the API reference) also accept ``?token=<token>``; the web page
then moves the token from its address into the header of its own requests. Tokens are
compared with :func:`hmac.compare_digest`, so the time taken says nothing about how much
of a guess was right.

Browsers keep other sites' scripts from reading the service's answers unless it sends
CORS headers; it sends none unless ``--cors ORIGIN`` names the sites allowed.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cnnkit.errors import CnnkitError

TOKEN_ENV = "CNNKIT_SERVE_TOKEN"
OPEN_PATHS = frozenset({"/health"})
PAGE_PATHS = frozenset({"/", "/docs"})


def read_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The service's token: ``token``, else the first line of ``token_file``, else ``$CNNKIT_SERVE_TOKEN``.

    Args:
        token: The token itself (``--token``); other users of the machine can read it in the process list,
            so prefer a file or the environment. Defaults to None.
        token_file: A file holding the token (``--token-file``); surrounding whitespace is ignored.
            Defaults to None.

    Returns:
        The token, or None when none is set (the service is open to whoever can reach it).

    Raises:
        CnnkitError: Both flags were given, the file cannot be read, or the token is empty.
    """
    if token is not None and token_file is not None:
        raise CnnkitError("give the token once: --token or --token-file, not both")
    source = "--token"
    if token_file is not None:
        source = f"--token-file {token_file}"
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise CnnkitError(f"--token-file {token_file} cannot be read: {error}") from None
    elif token is None and TOKEN_ENV in os.environ:
        source, token = f"${TOKEN_ENV}", os.environ[TOKEN_ENV]
    if token is None:
        return None
    token = token.strip()
    if not token:
        raise CnnkitError(f"{source} gives an empty token; set a non-empty one, or leave it out to serve without one")
    if not token.isascii() or not token.isprintable():
        raise CnnkitError(f"{source} holds characters an HTTP header cannot carry; use printable ASCII only")
    return token


def check_origins(origins: list[str] | tuple[str, ...]) -> list[str]:
    """The ``--cors`` origins, each ``scheme://host[:port]`` as a browser sends it in ``Origin`` (or ``*``: any).

    Raises:
        CnnkitError: An origin has a path, a query or no scheme, so no browser would ever match it.
    """
    checked = []
    for origin in origins:
        origin = origin.rstrip("/")
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query):
            raise CnnkitError(
                f"--cors {origin!r} is not an origin: give scheme and host only, like https://app.example.org "
                "or http://localhost:3000 (or * for any site)"
            )
        checked.append(origin)
    return checked


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may well resolve to a public address
        return False


def add_access_control(app, token: str | None, cors_origins: Sequence[str]) -> None:
    """Guard a service's app (prediction or search) with the token, then allow the CORS origins.

    CORS is added last, so it is outermost: a browser's preflight is answered before the token is asked for.
    """
    if token is not None:
        app.add_middleware(BearerAuth, token=token)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )


class BearerAuth:
    """ASGI middleware: 401 for any request without the token, except ``OPEN_PATHS``.

    Args:
        app: The application to guard.
        token: The token callers must present.
    """

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.expected = token.encode("ascii")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.presented(scope):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        detail = "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'"
        if scope["path"] in PAGE_PATHS:
            detail += f", or open {scope['path']}?token=<token>"
        response = JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def presented(self, scope) -> bool:
        """Whether the request carries the token: in its Authorization header, or in ``?token=`` on a page."""
        candidates = [
            value[len(b"bearer ") :].strip()
            for name, value in scope["headers"]
            if name == b"authorization" and value[:7].lower() == b"bearer "
        ]
        if scope["path"] in PAGE_PATHS and scope["method"] == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            candidates += [value.encode("latin-1", "replace") for value in query.get("token", [])]
        return any(hmac.compare_digest(candidate, self.expected) for candidate in candidates)
