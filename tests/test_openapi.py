"""The OpenAPI document at /api/schema/: a valid OpenAPI 3 document that describes what the gateway really does."""

import httpx
import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"
ERROR_STATUSES = ["400", "401", "404", "413", "429", "502", "503", "504"]
RATE_LIMIT_HEADERS = [
    f"x-ratelimit-{part}-{kind}" for kind in ("requests", "tokens") for part in ("limit", "remaining", "reset")
]


@pytest.fixture(scope="module")
def schema(gateway) -> dict:
    response = httpx.get(f"{gateway.url}/api/schema/?format=json", timeout=30)  # no API key needed
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    return response.json()


def conforms(schema: dict, ref: str, instance) -> list[str]:
    """Errors of `instance` against `#/components/schemas/<ref>` (OpenAPI 3.0 rules: `nullable` and all)."""
    document = {"$ref": f"#/components/schemas/{ref}", "components": schema["components"]}
    return [error.message for error in OAS30Validator(document).iter_errors(instance)]


def test_schema_is_a_valid_openapi_3_document(schema):
    validate(schema)  # raises on any violation of the OpenAPI 3.0 specification
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Tollgate API"
    assert {CHAT, "/api/route", "/v1/models"} <= set(schema["paths"])


def test_bearer_auth_is_described(schema):
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for path in (CHAT, "/api/route"):
        assert schema["paths"][path]["post"]["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/v1/models"]["get"]["security"] == [{"bearerAuth": []}]


def test_request_body_and_both_kinds_of_answer(schema):
    operation = schema["paths"][CHAT]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    request_ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    request = schema["components"]["schemas"][request_ref]
    assert set(request["required"]) == {"model", "messages"}
    assert request.get("additionalProperties", True) is not False  # new OpenAI parameters pass
    assert {"stream", "stream_options", "temperature", "max_completion_tokens", "tools"} <= set(request["properties"])
    assert request["properties"]["messages"]["minItems"] == 1
    assert not conforms(schema, request_ref, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert conforms(schema, request_ref, {"model": MODEL, "messages": []})
    assert conforms(schema, request_ref, {"model": MODEL, "messages": [{"role": "user"}], "temperature": 3})

    ok = operation["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "text/event-stream"}
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}


def test_every_error_status_has_the_openai_error_shape(schema):
    responses = schema["paths"][CHAT]["post"]["responses"]
    for status in ERROR_STATUSES:
        assert status in responses, status
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }, status
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    assert error["properties"]["param"]["nullable"] is True and error["properties"]["code"]["nullable"] is True


def test_rate_limit_headers_are_described(schema):
    responses = schema["paths"][CHAT]["post"]["responses"]
    for status in ("200", "429"):
        assert set(RATE_LIMIT_HEADERS) <= set(responses[status]["headers"]), status
        assert responses[status]["headers"]["x-ratelimit-reset-requests"]["schema"]["type"] == "string"
        assert responses[status]["headers"]["x-ratelimit-remaining-tokens"]["schema"]["type"] == "integer"
    assert {"retry-after", "x-should-retry"} <= set(responses["429"]["headers"])
    assert "x-request-id" in responses["401"]["headers"]


def test_real_answers_conform_to_the_schema(schema, gateway, api_key):
    """What the gateway actually sends (a completion, an error, the model list) matches what the schema says."""
    _, raw = api_key
    auth = {"Authorization": f"Bearer {raw}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        answer = http.post(CHAT, headers=auth, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        assert not conforms(schema, "ChatCompletion", answer.json())
        assert conforms(schema, "ChatCompletion", {**answer.json(), "choices": "not a list"})

        for response in (
            http.post(CHAT, json={"model": MODEL, "messages": []}),  # 401: no key
            http.post(CHAT, headers=auth, json={"model": MODEL, "messages": []}),  # 400
        ):
            assert str(response.status_code) in schema["paths"][CHAT]["post"]["responses"]
            assert not conforms(schema, "ErrorResponse", response.json())

        models = http.get("/v1/models", headers=auth)
        assert models.status_code == 200
        assert not conforms(schema, "ModelList", models.json())

        stream = http.post(
            CHAT, headers=auth, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        )
        assert (
            stream.headers["content-type"].split(";")[0] in schema["paths"][CHAT]["post"]["responses"]["200"]["content"]
        )


def test_swagger_ui_is_served_without_a_cdn(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        page = http.get("/api/docs/")
        assert page.status_code == 200
        assert "/api/schema/" in page.text
        assert "cdn.jsdelivr.net" not in page.text and "unpkg.com" not in page.text
        assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page.text
        bundle = http.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 100_000
