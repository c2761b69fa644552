"""`/docs` in a real browser with the network to everything but the server refused, as on a
laptop offline or behind a strict proxy: Swagger UI renders every operation of
`/openapi.json` from the server's own files, under its Content-Security-Policy, and an
operation can be tried from the page."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import CHROMIUM, Console, Server

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install chromium (or `make system-deps`)",
        allow_module_level=True,
    )

from playwright.sync_api import Page

pytestmark = pytest.mark.e2e


def only_the_server(page: Page, server: Server) -> list[str]:
    """Refuse every request not to the server's origin; return the list of those refused."""
    refused: list[str] = []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url == server.url or url.startswith(server.url + "/"):
            request_route.continue_()
        else:
            refused.append(url)
            request_route.abort("internetdisconnected")

    page.route("**/*", route)
    return refused


def test_docs_render_every_operation_offline(server: Server, page: Page, console: Console) -> None:
    document = server.client.get("/openapi.json").json()
    operations = sorted(
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    )
    refused = only_the_server(page, server)

    response = page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock-summary", timeout=15_000)

    shown = sorted(
        zip(
            page.locator(".opblock-summary-method").all_inner_texts(),
            page.locator(".opblock-summary-path").all_inner_texts(),
            strict=True,
        )
    )
    assert shown == operations
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src" not in policy  # no inline scripts
    assert refused == []
    assert console.unexpected() == []


def test_an_operation_can_be_tried_from_the_docs(server: Server, page: Page, console) -> None:
    server.post_ticks([{"symbol": "DOCSUSDT", "price": 1.5, "ts": time.time() - 60, "volume": 1}])
    refused = only_the_server(page, server)
    page.goto(server.url + "/docs")

    operation = page.locator(".opblock", has=page.locator('[data-path="/api/v1/symbols"]'))
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()

    answer = operation.locator(".live-responses-table tr.response")
    answer.locator(".response-col_description pre").first.wait_for(timeout=10_000)
    assert answer.locator(".response-col_status").inner_text().strip() == "200"
    assert "DOCSUSDT" in answer.locator(".response-col_description pre").first.inner_text()
    assert refused == []
    assert console.unexpected() == []
