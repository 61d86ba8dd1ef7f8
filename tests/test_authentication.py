"""Bearer-key authentication: 401 (never 403) in OpenAI's shape; keys only from the header; nothing leaks."""

import time
from datetime import timedelta

import httpx
import openai
import pytest
from django.db import connection
from django.utils import timezone

from apikeys.services import api_key_revoke
from tests.conftest import assert_openai_error

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer abcdefgh.wrongwrongwrongwrongwrongwrongwr"},
        {"Authorization": "Bearer a b"},
        {"Authorization": "Bearer \u00e9t\u00e9.x".encode("latin-1")},
    ],
)
def test_missing_or_wrong_keys_are_401_invalid_api_key(http, gateway, headers):
    response = http.post(CHAT, headers=headers, json=BODY)
    assert_openai_error(response, 401, type_="invalid_request_error", code="invalid_api_key")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_sdk_raises_authentication_error_not_permission_denied(gateway):
    with pytest.raises(openai.AuthenticationError):
        gateway.client("abcdefgh.wrongwrongwrongwrongwrongwrongwr").chat.completions.create(**BODY)


def test_a_wrong_secret_for_an_existing_prefix_is_refused(http, api_key):
    prefix = api_key[0].prefix
    response = http.post(CHAT, headers={"Authorization": f"Bearer {prefix}.{'x' * 32}"}, json=BODY)
    assert_openai_error(response, 401, code="invalid_api_key")


def test_key_in_query_string_or_body_is_not_accepted(http, api_key):
    raw = api_key[1]
    response = http.post(f"{CHAT}?api_key={raw}", json=BODY)
    assert_openai_error(response, 401, code="invalid_api_key")
    response = http.post(CHAT, json={**BODY, "api_key": raw})
    assert_openai_error(response, 401, code="invalid_api_key")


def test_doubled_authorization_header_is_refused(gateway, api_key):
    raw = api_key[1]
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        headers=[("Authorization", f"Bearer {raw}"), ("Authorization", f"Bearer {raw}")],
        json=BODY,
    )
    assert_openai_error(response, 401, code="invalid_api_key")


def test_revoked_key_is_401(client, api_key):
    client.chat.completions.create(**BODY)  # works, and is now cached by the worker that served it
    api_key_revoke(api_key=api_key[0], actor="test")
    with pytest.raises(openai.AuthenticationError) as caught:
        for _ in range(20):  # both workers: whichever serves, the key is refused within the poll interval
            client.chat.completions.create(**BODY)
            time.sleep(0.1)
    assert "revoked" in caught.value.body["message"]


def test_expired_key_says_expired(make_key, gateway):
    _, raw = make_key(name="old", expires=timezone.now() - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.client(raw).chat.completions.create(**BODY)
    assert "expired" in caught.value.body["message"]
    assert caught.value.body["code"] == "invalid_api_key"


def test_raw_key_is_stored_nowhere_and_logged_nowhere(client, api_key, gateway, http):
    raw = api_key[1]
    client.chat.completions.create(**BODY)
    http.post(CHAT, headers={"Authorization": f"Bearer {raw}x"}, json=BODY)  # a failed attempt too
    secret = raw.split(".", 1)[1]
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (table names from introspection)
            for row in cursor.fetchall():
                assert secret not in repr(row), f"the raw key's secret is stored in {table}"
    assert secret not in gateway.log
