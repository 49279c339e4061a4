"""What a client sends: the cap on a request's size, and uploaded files on their way to pixels.

Uploads are written under a fresh temporary folder, each as `upload-<n>` (the client's file
name is a label for the answer, never part of a path), and read back by core/imageio.py like any
file on disk, so an upload is decoded, EXIF-turned, size-checked and cell-cropped exactly as
`wbcnet predict` would treat the same file.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..data.cache import DecodedImages, decode_images, default_workers


@dataclass
class Upload:
    name: str     # what the client called it, for the answer only
    path: Path    # where its bytes are, inside the request's temporary folder


def display_name(filename: str | None, index: int) -> str:
    """The client's file name without any folders or control characters, for the answer."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:200]
    return name or f"file {index + 1}"


def save_uploads(files, folder: Path) -> list[Upload]:
    """Copy each starlette UploadFile into `folder` (a TemporaryDirectory the caller owns)."""
    saved = []
    for i, f in enumerate(files):
        path = folder / f"upload-{i}"
        f.file.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(f.file, out, 1 << 20)
        saved.append(Upload(display_name(f.filename, i), path))
    return saved


def decode_cells(uploads: list[Upload], prep) -> DecodedImages:
    """The model inputs of cell images, the way predict makes them (in parallel threads)."""
    return decode_images([str(u.path) for u in uploads], prep, min(len(uploads), default_workers()),
                         progress=False)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 with a one-line message.

    A declared Content-Length over the cap is refused before anything is parsed; a body without
    one is counted as it arrives and stopped at the cap. Either way the rest of the body is read
    and thrown away before the answer (up to `drain_factor` times the cap): a client that is
    still sending when the server closes gets a connection reset instead of the answer, and a
    page would show "network error" rather than why."""

    def __init__(self, app, max_bytes: int, drain_factor: int = 8):
        self.app, self.max_bytes, self.drain_factor = app, max_bytes, drain_factor

    def message(self, size: int | None) -> str:
        got = f"{size / 1e6:.1f} MB" if size is not None else f"more than {self.max_bytes / 1e6:.1f} MB"
        return (f"request too large: {got}; this server takes at most {self.max_bytes / 1e6:.1f} MB per request "
                f"(wbcnet serve --max-upload-mb); send fewer or smaller files at a time")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        try:
            size = int(declared) if declared is not None else None
        except ValueError:
            size = None
        if size is not None and size > self.max_bytes:
            await self._drain(receive, min(size, self.drain_factor * self.max_bytes))
            return await JSONResponse({"detail": self.message(size)}, 413)(scope, receive, send)

        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive, self.drain_factor * self.max_bytes - seen)
                    raise _TooLarge(self.message(None))
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _drain(receive, limit: int) -> None:
        got = 0
        while got < limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            got += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


class _TooLarge(HTTPException):
    """Raised from inside the body stream while a route parses its form. An HTTPException,
    because FastAPI passes those on as they are (it answers any other error there with 400)."""

    def __init__(self, detail: str):
        super().__init__(413, detail)
