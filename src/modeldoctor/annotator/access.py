"""Who may use the annotation server: requests that carry the session's token and come from its own page.

The server listens on 127.0.0.1, but any web page open in the same browser can send requests there.  As local
servers such as Jupyter do, each session draws a random token that the printed / opened URL carries; every
request must present it (``?token=`` or the ``X-ModelDoctor-Token`` header, which the page sends), and a
``Host`` or ``Origin`` that is not the server itself (DNS rebinding, another site's page) is refused.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

TOKEN_HEADER = "X-ModelDoctor-Token"
LOCAL_NAMES = ("127.0.0.1", "localhost")


class Headers(Protocol):
    """Request headers looked up by name (``http.server``'s are case-insensitive)."""

    def get(self, name: str) -> str | None: ...


@dataclass
class SessionAccess:
    """The token of one annotation session and the port it serves on."""

    port: int
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def hosts(self) -> set[str]:
        return {f"{name}:{self.port}" for name in LOCAL_NAMES}

    def refusal(self, target: str, headers: Headers) -> str | None:
        """Why a request for ``target`` (path and query) with ``headers`` is refused, or ``None`` to serve it."""
        if headers.get("Host") not in self.hosts():
            return f"foreign Host {headers.get('Host')!r}; open the address modeldoctor annotate printed"
        origin = headers.get("Origin")
        if origin is not None and origin not in {f"http://{host}" for host in self.hosts()}:
            return f"foreign Origin {origin!r}; only the annotation page itself may send requests"
        given = headers.get(TOKEN_HEADER) or next(iter(parse_qs(urlsplit(target).query).get("token", [])), "")
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return "missing or wrong session token; open the address modeldoctor annotate printed (with ?token=)"
        return None
