"""The drawing page's files (`/` and `/static/<file>`): plain files from one directory.

Only a plain file directly in STATIC_DIR is served: no dot files, no path separators, no
link out of the directory; anything else is "no such file" (404).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Final

from mnist_serving_server.core.errors import NoSuchEndpointError

STATIC_DIR: Final = Path(__file__).parent / "static"
INDEX_FILE: Final = "index.html"


def read(filename: str) -> tuple[bytes, bytes]:
    """(content, content type) of the page's file `filename`; NoSuchEndpointError if none."""
    if (
        not filename
        or filename.startswith(".")
        or "/" in filename
        or "\\" in filename
        or "\x00" in filename
    ):
        raise NoSuchEndpointError("no such file")
    path = STATIC_DIR / filename
    try:
        if path.resolve().parent != STATIC_DIR.resolve() or not path.is_file():
            raise NoSuchEndpointError("no such file")
        content = path.read_bytes()
    except OSError:
        raise NoSuchEndpointError("no such file") from None
    kind, _ = mimetypes.guess_type(filename)
    content_type = (kind or "application/octet-stream").encode()
    if content_type.startswith(b"text/") or content_type == b"application/javascript":
        content_type += b"; charset=utf-8"
    return content, content_type
