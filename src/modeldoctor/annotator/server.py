"""A local annotation page, served on 127.0.0.1 by the standard library's ``http.server``.

Routes: ``GET /`` the page (``page.html``, self-contained); ``GET /api/state`` the images to annotate, the image
size and what is saved; ``GET /image/N`` image N as a PNG; ``POST /api/save`` one image's boxes / painted layer /
"no object" (written at once by :class:`~modeldoctor.annotator.store.AnnotationStore`); ``POST /api/done`` ends
the session.  Nothing is fetched from elsewhere, so it works offline.  Every request needs the session's token
and the server's own Host / Origin (:mod:`modeldoctor.annotator.access`); anything else gets 403 and changes nothing.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from modeldoctor.annotator.access import SessionAccess
from modeldoctor.annotator.store import AnnotationStore
from modeldoctor.core.errors import UserError

logger = logging.getLogger(__name__)
MAX_BODY = 16 << 20  # bytes; a painted 1024-px layer is far smaller


@dataclass
class Item:
    """One image on the page: its sample id, class name and (when known) the model's confidence in that class."""

    id: str
    label: str
    confidence: float | None = None


def png_bytes(raw: torch.Tensor) -> bytes:
    """A (C, H, W) image in [0, 1] as PNG (grey for one channel)."""
    from PIL import Image

    array = (raw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else np.ascontiguousarray(array[..., :3])).save(buf, "PNG")
    return buf.getvalue()


class AnnotationServer:
    """Serves ``items`` (images read by ``image(i)``) and saves into ``store``; :meth:`start` runs it in a thread,
    :meth:`wait` blocks until the page says it is done (or Ctrl-C), :meth:`close` stops it."""

    def __init__(self, items: Sequence[Item], image: Callable[[int], torch.Tensor], store: AnnotationStore,
                 port: int = 0) -> None:
        if not items:
            raise UserError("nothing to annotate: the list of images is empty")
        self.items, self.image, self.store = list(items), image, store
        self.done = threading.Event()
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        except OSError as exc:
            raise UserError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pass another --port") from None
        self.access = SessionAccess(int(self.httpd.server_address[1]))
        self.thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The server's root, without the token: requests to it alone are refused."""
        return f"http://127.0.0.1:{self.access.port}/"

    @property
    def url(self) -> str:
        """The page's address with the session token: what to print and open."""
        return f"{self.address}?token={self.access.token}"

    def start(self) -> AnnotationServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="modeldoctor-annotate", daemon=True)
        self.thread.start()
        return self

    def wait(self) -> None:
        self.done.wait()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> AnnotationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self) -> dict[str, Any]:
        return {"size": self.store.size, "items": [asdict(item) for item in self.items],
                "records": {sid: asdict(r) for sid, r in self.store.records.items()}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                logger.debug(format, *args)

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, obj: Any, status: int = HTTPStatus.OK) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def _refused(self) -> bool:
                reason = server.access.refusal(self.path, self.headers)
                if reason is not None:
                    self._json({"error": reason}, HTTPStatus.FORBIDDEN)
                return reason is not None

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self._refused():
                    return
                path = urlsplit(self.path).path
                if path == "/":
                    page = resources.files("modeldoctor.annotator").joinpath("page.html").read_bytes()
                    self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
                elif path == "/api/state":
                    self._json(server.state())
                elif path.startswith("/image/") and path[7:].isdigit() and int(path[7:]) < len(server.items):
                    self._send(HTTPStatus.OK, png_bytes(server.image(int(path[7:]))), "image/png")
                else:
                    self._json({"error": f"no such page {path}"}, HTTPStatus.NOT_FOUND)

            def do_POST(self) -> None:  # noqa: N802
                if self._refused():
                    return
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._json({"error": "request too large"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                    return
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if path == "/api/save":
                        if body.get("id") not in {item.id for item in server.items}:
                            raise UserError(f"unknown image id {body.get('id')!r}")
                        record = server.store.save(body["id"], body.get("boxes", []), body.get("paint"),
                                                   bool(body.get("no_object")))
                        self._json({"saved": body["id"], "record": asdict(record)})
                    elif path == "/api/done":
                        server.done.set()
                        self._json({"done": True})
                    else:
                        self._json({"error": f"no such action {path}"}, HTTPStatus.NOT_FOUND)
                except (UserError, ValueError, TypeError) as exc:
                    self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

        return Handler
