"""Swagger UI at `/docs`, from the package: no CDN, so the page renders offline, behind a
strict proxy and in a browser test with the network refused.

Swagger UI's files are vendored from the npm registry (`tickhub.ui.assets`, licence and notice
served beside them); the page and the script that starts it are tickhub/ui/docs/. Its policy
allows scripts from this server only (the initialiser is a file, not an inline script),
requests to this server only (the document, "Try it out"), and inline styles, which Swagger
UI's components set.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from quart import Blueprint, Response
from quart_schema import hide

from tickhub.http.errors import ApiError
from tickhub.http.ui import serve_file
from tickhub.ui.assets import DOCS

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# URL name under /docs/vendor/ → the vendored file.
VENDORED = {PurePosixPath(path).name: path for path in DOCS}


def make_blueprint() -> Blueprint:
    bp = Blueprint("docs", __name__)

    @bp.get("/docs")
    @hide
    async def page() -> Response:
        return serve_file("docs/index.html", CSP)

    @bp.get("/docs/init.js")
    @hide
    async def initialiser() -> Response:
        return serve_file("docs/init.js", CSP)

    @bp.get("/docs/vendor/<name>")
    @hide
    async def vendored(name: str) -> Response:
        if name not in VENDORED:
            raise ApiError(404, "not found")
        return serve_file(VENDORED[name], CSP)

    return bp
