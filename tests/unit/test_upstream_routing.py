"""Server-free: where a request goes on each kind of upstream, what its body becomes, and how an Azure error body
leaves Tollgate."""

import orjson
import pytest

from completions.upstream import openai_error_body
from upstreams.health import retry_after_seconds
from upstreams.targets import Target

AZURE_V1 = Target(name="c", kind="azure", base_url="https://r.openai.azure.com", api_key="az", aliases={"m": "dep"})
AZURE_DEPLOYMENTS = Target(
    name="d", kind="azure", base_url="https://r.openai.azure.com", api_key="az", api_version="2024-10-21",
    aliases={"m": "dep"},
)  # fmt: skip
OPENAI = Target(name="a", kind="openai", base_url="https://api.openai.com/v1", api_key="sk", project="proj_1")


@pytest.mark.parametrize(
    ("target", "path", "query", "expected"),
    [
        (OPENAI, "/chat/completions", "", ("/chat/completions", "")),
        (AZURE_V1, "/chat/completions", "", ("/v1/chat/completions", "")),
        (AZURE_V1, "/responses/resp_1", "include=x", ("/v1/responses/resp_1", "include=x")),
        (AZURE_DEPLOYMENTS, "/chat/completions", "", ("/deployments/dep/chat/completions", "api-version=2024-10-21")),
        (AZURE_DEPLOYMENTS, "/embeddings", "", ("/deployments/dep/embeddings", "api-version=2024-10-21")),
        (AZURE_DEPLOYMENTS, "/responses", "a=1", ("/responses", "a=1&api-version=2024-10-21")),
    ],
)
def test_each_kind_of_upstream_is_sent_its_own_url(target, path, query, expected):
    assert target.locate(path, query, "m") == expected


def test_azure_sends_its_key_as_api_key_and_openai_as_a_bearer_with_its_project():
    assert AZURE_V1.client_base_url() == "https://r.openai.azure.com/openai"
    assert AZURE_V1.auth_headers() == {"api-key": "az"}
    assert OPENAI.auth_headers() == {"Authorization": "Bearer sk", "OpenAI-Project": "proj_1"}


def test_an_alias_rewrites_only_the_model_and_an_unaliased_body_stays_the_same_bytes():
    body = b'{"model": "m", "messages": [], "x": 1}'
    assert orjson.loads(AZURE_V1.body_for(body, "m")) == {"model": "dep", "messages": [], "x": 1}
    assert OPENAI.body_for(body, "m") is body
    assert AZURE_V1.serves("m") and not AZURE_V1.serves("other") and OPENAI.serves("anything")


@pytest.mark.parametrize(
    ("content", "status", "message", "code"),
    [
        (b'{"error": {"code": "DeploymentNotFound", "message": "The deployment does not exist."}}', 404,
         "The deployment does not exist.", "DeploymentNotFound"),
        (b'{"statusCode": 429, "message": "Rate limit is exceeded."}', 429, "Rate limit is exceeded.", "429"),
        (b"<html>Bad gateway</html>", 400, "<html>Bad gateway</html>", None),
    ],
)  # fmt: skip
def test_azure_error_bodies_leave_in_openais_shape(content, status, message, code):
    error = orjson.loads(openai_error_body(content, status))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["message"], error["code"]) == (message, code)
    assert error["type"] == ("requests" if status == 429 else "invalid_request_error")


def test_retry_after_is_read_in_seconds_or_milliseconds():
    assert retry_after_seconds({"retry-after": "30"}) == 30
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({}) is None
