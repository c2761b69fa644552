"""The dashboard's static files, served by the api role at `/`.

Only the page's own files are served (the allow-list of `tickhub.ui.build.page_files`), with
JavaScript content types so module scripts load. The page and its config revalidate on every
load (`no-cache` with an ETag) so a deploy shows at once; the vendored chart library is
pinned, so it may be cached for a day.
"""

from __future__ import annotations

import hashlib

from quart import Blueprint, Response, request
from quart_schema import hide

from tickhub.http.errors import ApiError
from tickhub.ui.build import CACHE_CONTROL, UI_DIR, content_type, page_files, render_config

# The strictest policy the chart library runs under: it sets inline styles on its canvas.
CSP = (
    "default-src 'self'; connect-src *; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
)


def make_blueprint(api_base_url: str | None = None, realtime_url: str | None = None) -> Blueprint:
    bp = Blueprint("ui", __name__)
    served = set(page_files(require_vendor=False))
    config = render_config(api_base_url, realtime_url).encode()

    @bp.get("/config.js")
    @hide
    async def page_config() -> Response:
        """The page's API and stream URLs (VITE_API_BASE_URL / VITE_REALTIME_URL)."""
        response = Response(config, content_type=content_type("config.js"))
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response

    @bp.get("/")
    @hide
    async def index() -> Response:
        return serve_file("index.html")

    @bp.get("/<path:relative>")
    @hide
    async def asset(relative: str) -> Response:
        if relative not in served:
            raise ApiError(404, "not found")
        return serve_file(relative)

    return bp


def serve_file(relative: str, csp: str = CSP) -> Response:
    """A file under tickhub/ui with its content type, ETag and cache policy; a page (HTML)
    also gets the Content-Security-Policy `csp` and the anti-framing headers."""
    path = UI_DIR / relative
    if not path.is_file():
        raise ApiError(404, "not found")
    body = path.read_bytes()
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    if request.headers.get("If-None-Match") == etag:
        response = Response(b"", status=304)
    else:
        response = Response(body, content_type=content_type(relative))
    response.headers["ETag"] = etag
    vendored = relative.startswith("vendor/")
    response.headers["Cache-Control"] = "public, max-age=86400" if vendored else CACHE_CONTROL
    if relative.endswith(".html"):
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
