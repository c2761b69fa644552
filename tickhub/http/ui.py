"""The dashboard's static files, served by the api role at `/`.

The page and its config are revalidated on every load (`no-cache`) so a deploy shows at
once; the vendored chart library is immutable for its pinned version, so it may be cached.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from quart import Blueprint, Response

from tickhub.http.errors import ApiError

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
SERVED = {".html", ".js", ".mjs", ".css", ".svg", ".png", ".ico", ".LICENSE", ".txt"}
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".LICENSE": "text/plain"}


def _file(relative: str) -> Path:
    path = (UI_DIR / relative).resolve()
    if UI_DIR not in path.parents or not path.is_file() or "node_modules" in path.parts:
        raise ApiError(404, "not found")
    if path.suffix not in SERVED:
        raise ApiError(404, "not found")
    return path


def make_blueprint() -> Blueprint:
    bp = Blueprint("ui", __name__)

    @bp.get("/")
    async def index() -> Response:
        return _serve("index.html")

    @bp.get("/<path:relative>")
    async def asset(relative: str) -> Response:
        return _serve(relative)

    return bp


def _serve(relative: str) -> Response:
    path = _file(relative)
    content_type = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    response = Response(path.read_bytes(), content_type=content_type)
    if "vendor" in path.parts:
        response.headers["Cache-Control"] = "public, max-age=86400"
    else:
        response.headers["Cache-Control"] = "no-cache"
    if path.suffix == ".html":
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; connect-src *; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
