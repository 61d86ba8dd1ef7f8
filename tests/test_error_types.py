"""The outcome's error type is one closed set (`core.outcome.ErrorType`), recorded the same way in usage records,
the log line and the metrics; upstream errors passed through are the upstream's, never a server error of ours."""

import httpx
import pytest

from core.outcome import ErrorType
from tests.test_usage_recording import wait_for_records

MODEL = "gpt-4o-mini"


def ask(gateway, raw_key, **fake):
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {raw_key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "fake": fake},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ErrorType.UPSTREAM_REJECTED),
        (404, ErrorType.UPSTREAM_REJECTED),
        (422, ErrorType.UPSTREAM_REJECTED),
        (429, ErrorType.UPSTREAM_RATE_LIMITED),
        (500, ErrorType.UPSTREAM_ERROR),
        (503, ErrorType.UPSTREAM_ERROR),
    ],
)
def test_upstream_errors_are_recorded_as_the_upstreams(gateway, make_key, status, expected):
    key, raw = make_key(name=f"upstream-{status}")
    response = ask(gateway, raw, status=status)
    assert response.status_code == (status if status < 500 else 502)
    [record] = wait_for_records(1, key_prefix=key.prefix)
    assert record.status == response.status_code
    assert record.error_type == expected
    assert record.endpoint == "chat.completions"


def test_every_recorded_error_type_is_in_the_closed_set(gateway, make_key):
    key, raw = make_key(name="closed-set", rpm=1, allowed_models=[MODEL])
    assert ask(gateway, raw).status_code == 200
    assert ask(gateway, raw).status_code == 429  # rate limited by Tollgate
    bad = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {raw}"},
        json={"model": "not-allowed", "input": "x"},
        timeout=30,
    )
    assert bad.status_code == 404
    records = wait_for_records(3, key_prefix=key.prefix)
    types = {record.error_type for record in records}
    assert types == {"", ErrorType.RATE_LIMIT_REQUESTS, ErrorType.MODEL_NOT_ALLOWED}
    assert types <= {str(value) for value in ErrorType}
