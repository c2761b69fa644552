"""The dashboard's static files: which files make the page, how to serve them, and a static build.

The api role serves the page from this directory at `/` (only the files `page_files()` lists, never
package.json, node_modules/ or this module). `build_static()` backs `tickhub ui build`: it copies
the page to a directory for static hosting and writes config.js with the API and stream URLs of
that deployment (the seed's VITE_API_BASE_URL / VITE_REALTIME_URL).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from tickhub.ui.assets import DASHBOARD

UI_DIR = Path(__file__).resolve().parent
CONFIG_FILE = "config.js"
# The page's vendored files (the chart library and its licence; see `assets`).
VENDOR_FILES = tuple(DASHBOARD)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
    ".NOTICE": "text/plain; charset=utf-8",
}
# File names carry no content hash, so browsers must revalidate (ETag / Last-Modified) every time;
# a 304 costs one round trip and an upgrade is never hidden behind a stale cache.
CACHE_CONTROL = "no-cache"


class UiBuildError(Exception):
    """The dashboard cannot be built or served as asked; the message says what to do."""


def page_files(source_dir: Path = UI_DIR, *, require_vendor: bool = True) -> list[str]:
    """Paths (relative, POSIX) of every file the page needs, config.js included.

    This is the allow-list for serving: anything else in the directory is not part of the page.
    Without the vendored chart library this raises (`make ui` builds it), unless `require_vendor`
    is false: then the page is listed without it and shows that the chart could not start.
    """
    own = ["index.html", "style.css", *sorted(p.name for p in source_dir.glob("*.js"))]
    missing = [name for name in own if not (source_dir / name).is_file()]
    if missing:
        raise UiBuildError(f"dashboard files missing under {source_dir}: {', '.join(missing)}")
    vendor = [name for name in VENDOR_FILES if (source_dir / name).is_file()]
    if require_vendor and len(vendor) < len(VENDOR_FILES):
        absent = sorted(set(VENDOR_FILES) - set(vendor))
        raise UiBuildError(
            f"the chart library is missing ({', '.join(absent)} under {source_dir}); "
            "run `make ui` to install it from package-lock.json"
        )
    return [*own, *vendor]


def content_type(path: str) -> str:
    """The Content-Type to serve a page file with (module scripts need a JavaScript type)."""
    return CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream")


def check_url(option: str, value: str | None) -> str | None:
    """An http(s) URL or an absolute path on the page's host; empty means the page's origin."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    parts = urlsplit(value)
    absolute = parts.scheme in ("http", "https") and bool(parts.netloc)
    path_only = value.startswith("/") and not value.startswith("//")
    if not (absolute or path_only) or any(c.isspace() for c in value):
        raise UiBuildError(
            f"{option} must be an http(s) URL or a path starting with '/', got {value!r}"
        )
    return value.rstrip("/") or "/"


def render_config(api_base_url: str | None, realtime_url: str | None) -> str:
    """config.js for these URLs (None: the page's origin). JSON is a valid JS expression."""
    values = {"apiBaseUrl": api_base_url, "realtimeUrl": realtime_url}
    return (
        "// Written by `tickhub ui build`; null means the page's own origin.\n"
        f"export default {json.dumps(values)};\n"
    )


def build_static(
    out_dir: Path, api_base_url: str | None, realtime_url: str | None, *, source_dir: Path = UI_DIR
) -> Path:
    """Copy the page to `out_dir` and write its config.js with the given URLs; returns `out_dir`."""
    api_base_url = check_url("--api-base-url", api_base_url)
    realtime_url = check_url("--realtime-url", realtime_url)
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(source_dir).resolve():
        raise UiBuildError(f"--out must not be the dashboard's source directory ({source_dir})")
    files = page_files(source_dir)
    for name in files:
        if name == CONFIG_FILE:
            continue
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_dir / name, target)
    (out_dir / CONFIG_FILE).write_text(render_config(api_base_url, realtime_url), encoding="utf-8")
    return out_dir
