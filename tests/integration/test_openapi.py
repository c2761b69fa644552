"""The API describes itself: an OpenAPI 3.2 document with every route (the SSE route and its
events included) that client tools accept — openapi-spec-validator for the process serving
every role and for each role alone, JSON Schema 2020-12 for the event schemas — and the
Swagger UI at /docs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from jsonschema.validators import Draft202012Validator
from openapi_spec_validator import validate

from tests.conftest import make_settings
from tickhub.http.app import create_app
from tickhub.http.services import Services
from tickhub.process import spec_of


def check_document(document: dict[str, Any]) -> None:
    """What a client generator needs: a valid document, one id per operation."""
    validate(document)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


async def test_openapi_describes_every_route(tickhub):
    response = await tickhub.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.2")
    paths = document["paths"]
    expected = {
        ("post", "/api/v1/webhooks/ticks"),
        ("post", "/api/v1/webhooks/symbols"),
        ("get", "/api/v1/symbols"),
        ("get", "/api/v1/ticks/{symbol}"),
        ("get", "/api/v1/ticks/{symbol}/history"),
        ("get", "/api/v1/metrics/{symbol}"),
        ("get", "/api/v1/stats"),
        ("get", "/api/v1/health/liveness"),
        ("get", "/api/v1/health/readiness"),
        ("get", "/realtime/ticks"),
        ("get", "/health/liveness"),
        ("get", "/health/readiness"),
        ("get", "/ops/health/liveness"),
        ("get", "/ops/health/readiness"),
        ("get", "/ops/metrics"),
    }
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert expected <= documented
    assert not any(p == "/" or "<path" in p or "{relative}" in p for p in paths)  # no UI files
    ingest = paths["/api/v1/webhooks/ticks"]["post"]
    assert ingest["security"] == [{"ApiKey": []}, {"Bearer": []}]  # either one
    assert {"202", "401", "413", "415", "422", "503"} <= set(map(str, ingest["responses"]))
    assert "requestBody" in ingest
    stream = paths["/realtime/ticks"]["get"]["responses"]["200"]
    events = stream["content"]["text/event-stream"]["itemSchema"]
    assert {e["properties"]["event"]["const"] for e in events["oneOf"]} == {
        "hello",
        "message",
        "reset",
        "ping",
    }
    body = ingest["requestBody"]["content"]["application/json"]["schema"]
    assert {"source", "items"} <= set(body["properties"])
    invalid = ingest["responses"]["422"]["content"]["application/json"]["schema"]
    assert "error" in invalid["properties"]
    assert "TickIn" in document["components"]["schemas"]


async def test_the_document_of_every_role_together_is_valid(tickhub):
    document = (await tickhub.get("/openapi.json")).json()
    check_document(document)
    # openapi-spec-validator does not look inside itemSchema: check it as the JSON Schema it is.
    events = document["paths"]["/realtime/ticks"]["get"]["responses"]["200"]["content"]
    Draft202012Validator.check_schema(events["text/event-stream"]["itemSchema"])
    for component in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(component)


@pytest.mark.parametrize("role", ["api", "gateway", "consumer", "feeder"])
async def test_the_document_of_each_role_alone_is_valid(role):
    settings = make_settings(None, roles=(role,))
    app = create_app(Services(settings, supervisor=None), spec_of((role,)).routes)
    response = await app.test_client().get("/openapi.json")
    assert response.status_code == 200
    check_document(await response.get_json())


async def test_swagger_ui_is_served_from_the_server_itself(tickhub):
    """Every file the page loads comes from this server (no CDN), and is there."""
    response = await tickhub.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
    assert "script-src" not in response.headers["content-security-policy"]  # 'self' only
    refs = re.findall(r'(?:src|href|data-openapi-url)="([^"#]+)"', response.text)
    own = [ref for ref in refs if ref.startswith("/")]
    assert {"/docs/init.js", "/docs/vendor/swagger-ui-bundle.js", "/openapi.json"} <= set(own)
    assert [ref for ref in refs if ref not in own and not ref.startswith("data:")] == [
        "https://swagger.io/tools/swagger-ui/"  # the credit's link, not loaded
    ]
    for ref in own:
        assert (await tickhub.get(ref)).status_code == 200, ref
