"""Security, against live servers:

* a key is read only from `Authorization: Bearer`: never from a query string, another header, a cookie, Basic
  auth or the body, on every authenticated endpoint (`test_authentication.py` covers the chat body and `?api_key=`);
* refusing a wrong key takes as long whether or not its prefix exists (no oracle for which prefixes are real);
* the admin needs a staff login and a CSRF token for every write; a staff user without the key permissions
  cannot revoke;
* the raw key (and the company's upstream key) appears in no log line (at DEBUG, both formats), no database row
  of any table, no metric (with per-key labels on), no answer to any client, and the client's key is never sent
  upstream, after a key's whole life through the admin: created, used every way, refused, revoked.
"""

import base64
import re
import secrets
import statistics
import string
import time

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection

from apikeys.models import APIKey
from tests.conftest import UPSTREAM_KEY, admin_login, assert_openai_error, server_password_hash

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PASSWORD = "security-test-password"
ALPHABET = string.ascii_letters + string.digits


def random_text(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def make_user(username: str, *, staff: bool, superuser: bool = False, permissions=()):
    user = get_user_model().objects.create_user(username, f"{username}@example.com", None)
    user.is_staff = staff
    user.is_superuser = superuser
    user.password = server_password_hash(PASSWORD)
    user.save()
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


# -- where a key may come from -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "placement",
    ["query api_key", "query key", "query access_token", "header api-key", "header x-api-key", "basic user",
     "basic password", "token scheme", "cookie api_key", "cookie Authorization"],
)  # fmt: skip
@pytest.mark.parametrize(("method", "path"), [("POST", CHAT), ("GET", "/v1/models"), ("POST", "/api/route")])
def test_a_key_anywhere_but_the_bearer_header_is_refused(gateway, api_key, placement, method, path):
    raw = api_key[1]
    params, headers, cookies = {}, {}, {}
    where, name = placement.split(" ")
    if where == "query":
        params[name] = raw
    elif where == "header":
        headers[name] = raw
    elif where == "basic":
        pair = f"{raw}:" if name == "user" else f"user:{raw}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    elif where == "token":
        headers["Authorization"] = f"Token {raw}"
    else:
        cookies[name] = raw
    with httpx.Client(base_url=gateway.url, cookies=cookies, timeout=30) as session:
        response = session.request(
            method, path, params=params, headers=headers, json=BODY if method == "POST" else None
        )
        assert_openai_error(response, 401, code="invalid_api_key")
        # The same key in the header works: the refusal was for where it was, not what it was.
        ok = session.request(
            method, path, headers={"Authorization": f"Bearer {raw}"}, json=BODY if method == "POST" else None
        )
        assert ok.status_code == 200, ok.text[:300]


# -- timing --------------------------------------------------------------------------------------------------------


def test_a_wrong_key_is_refused_as_fast_with_an_existing_prefix_as_without(gateway, api_key):
    """Medians of 100 distinct wrong keys of each kind, interleaved (the key cache caches a refusal per key, so
    every key is new). A server that skipped the hash check for unknown prefixes, or ran a slow hasher only for
    known ones, would show it here; sub-millisecond differences drown in the noise, as they would for an
    attacker."""
    prefix = api_key[0].prefix
    samples = {"existing prefix": [], "random prefix": []}
    with httpx.Client(base_url=gateway.url, timeout=30) as session:
        for _ in range(20):  # warm the connection and the code paths
            session.post(CHAT, headers={"Authorization": f"Bearer {random_text(8)}.{random_text(32)}"}, json=BODY)
        for round_ in range(100):
            kinds = list(samples) if round_ % 2 else list(reversed(samples))
            for kind in kinds:
                head = prefix if kind == "existing prefix" else random_text(8)
                raw = f"{head}.{random_text(32)}"
                started = time.perf_counter()
                response = session.post(CHAT, headers={"Authorization": f"Bearer {raw}"}, json=BODY)
                samples[kind].append(time.perf_counter() - started)
                assert response.status_code == 401
                assert response.json()["error"]["message"] == "Incorrect API key provided."
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    difference = abs(medians["existing prefix"] - medians["random prefix"])
    print(
        "\nwrong-key refusal, median of 100: "
        + ", ".join(f"{kind} {value * 1000:.2f} ms" for kind, value in medians.items())
        + f"; difference {difference * 1000:.2f} ms"
    )
    assert difference < max(0.002, 0.5 * min(medians.values())), medians


# -- the admin -----------------------------------------------------------------------------------------------------


def test_the_admin_sends_anonymous_visitors_to_the_login_page(gateway):
    for path in ("/admin/", "/admin/apikeys/apikey/", "/admin/apikeys/apikey/add/", "/admin/apikeys/apikey/revoke/"):
        response = httpx.get(f"{gateway.url}{path}", timeout=30)
        assert response.status_code == 302, (path, response.status_code)
        assert response.headers["location"].startswith("/admin/login/?next="), response.headers["location"]


def test_an_anonymous_post_to_an_admin_action_changes_nothing(gateway, make_key):
    key, _ = make_key(name="anonymous-target")
    with httpx.Client(base_url=gateway.url, timeout=30) as session:
        session.get("/admin/login/")
        token = session.cookies["csrftoken"]
        response = session.post(
            "/admin/apikeys/apikey/revoke/", data={"keys": key.prefix, "csrfmiddlewaretoken": token}
        )
    assert response.status_code == 302 and response.headers["location"].startswith("/admin/login/")
    assert not APIKey.objects.get(pk=key.pk).revoked


def test_the_admin_login_needs_a_csrf_token(gateway, transactional_db):
    make_user("csrf-staff", staff=True, superuser=True)
    with httpx.Client(base_url=gateway.url, timeout=30) as session:
        session.get("/admin/login/")
        response = session.post(
            "/admin/login/?next=/admin/", data={"username": "csrf-staff", "password": PASSWORD, "next": "/admin/"}
        )
        assert response.status_code == 403
        assert "sessionid" not in session.cookies
        assert session.get("/admin/").status_code == 302  # still not logged in


def test_an_admin_write_without_a_csrf_token_is_403(gateway, make_key, transactional_db):
    make_user("csrf-writer", staff=True, superuser=True)
    key, _ = make_key(name="csrf-target")
    session, login = admin_login(gateway.url, "csrf-writer", PASSWORD)
    try:
        assert login.status_code == 302
        assert session.get("/admin/apikeys/apikey/").status_code == 200
        response = session.post("/admin/apikeys/apikey/revoke/", data={"keys": key.prefix})
        assert response.status_code == 403
        forged = session.post(
            "/admin/apikeys/apikey/revoke/", data={"keys": key.prefix, "csrfmiddlewaretoken": "x" * 64}
        )
        assert forged.status_code == 403
        assert not APIKey.objects.get(pk=key.pk).revoked
        # With its token the same request works: the 403s were the missing token's.
        done = session.post(
            "/admin/apikeys/apikey/revoke/",
            data={"keys": key.prefix, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        )
        assert done.status_code == 302
        assert APIKey.objects.get(pk=key.pk).revoked
    finally:
        session.close()


def test_a_user_who_is_not_staff_cannot_enter_the_admin(gateway, transactional_db):
    make_user("not-staff", staff=False)
    session, login = admin_login(gateway.url, "not-staff", PASSWORD)
    try:
        assert login.status_code == 200  # the login form again, with its error
        assert "staff account" in login.text
        assert session.get("/admin/").status_code == 302
        assert session.get("/admin/apikeys/apikey/").status_code == 302
    finally:
        session.close()


def test_staff_without_key_permissions_cannot_see_or_revoke_keys(gateway, make_key, transactional_db):
    make_user("plain-staff", staff=True)
    key, _ = make_key(name="permission-target")
    session, login = admin_login(gateway.url, "plain-staff", PASSWORD)
    try:
        assert login.status_code == 302
        assert session.get("/admin/apikeys/apikey/").status_code == 403
        response = session.post(
            "/admin/apikeys/apikey/revoke/",
            data={"keys": key.prefix, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        )
        assert response.status_code == 403
        assert not APIKey.objects.get(pk=key.pk).revoked
    finally:
        session.close()


# -- the raw key is nowhere ----------------------------------------------------------------------------------------

ADD_FORM = {
    "name": "leak-hunt",
    "owner": "security",
    "notes": "",
    "rpm": "8",
    "tpm": "",
    "max_concurrent": "",
    "allowed_models": "gpt-4o-mini",
    "expiry_date_0": "",
    "expiry_date_1": "",
    "budget_usd": "",
    "budget_period": "month",
}


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_the_raw_key_is_in_no_log_row_metric_or_answer(log_format, start_gateway, fake_upstream, transactional_db):
    env = {"LOG_LEVEL": "DEBUG", "LOG_FORMAT": log_format, "METRICS_PER_KEY": "true", "GUNICORN_LOG_LEVEL": "debug"}
    gateway = start_gateway(name=f"leak-hunt-{log_format}", env=env)
    make_user("leak-admin", staff=True, superuser=True)
    answers = []  # every answer any client got: headers and body

    def keep(response):
        answers.append(str(response.headers.multi_items()) + response.text)
        return response

    # Created through the admin; the raw key is read from the page that shows it once.
    session, login = admin_login(gateway.url, "leak-admin", PASSWORD)
    try:
        assert login.status_code == 302
        created = session.post(
            "/admin/apikeys/apikey/add/", data={**ADD_FORM, "csrfmiddlewaretoken": session.cookies["csrftoken"]}
        )
        assert created.status_code == 302, created.text[:1000]
        page = session.get(created.headers["location"]).text
        raw = re.findall(r'value="([A-Za-z0-9]{8}\.[A-Za-z0-9]{32})"[^>]*data-raw-key', page)[0]
        prefix, secret = raw.split(".")
        fake_upstream.clear()

        bearer = {"Authorization": f"Bearer {raw}"}
        with httpx.Client(base_url=gateway.url, timeout=30) as api:
            keep(api.post(CHAT, headers=bearer, json=BODY))
            keep(api.post(CHAT, headers=bearer, json={**BODY, "stream": True}))
            # The key pasted into a prompt: forwarded (it is the client's content) but never logged.
            echoed = api.post(CHAT, headers=bearer, json={**BODY, "messages": [{"role": "user", "content": raw}]})
            assert echoed.status_code == 200  # the fake upstream echoes the prompt: not kept with the answers
            keep(api.post(CHAT, headers=bearer, json={**BODY, "fake": {"status": 500}}))  # 502, ERROR lines
            keep(api.post(CHAT, headers=bearer, json={**BODY, "stream": True, "fake": {"cut_after_chunks": 1}}))
            keep(api.post(CHAT, headers=bearer, content=b'{"model": "gpt-4o-mini", "messages": [' + raw.encode()))
            keep(api.post(CHAT, headers=bearer, json={**BODY, "model": "gpt-4o"}))  # not in the allowlist
            keep(api.post(CHAT, headers=bearer, json={**BODY, "temperature": raw}))  # invalid field
            keep(api.get("/v1/models", headers=bearer))
            keep(api.post(CHAT, params={"api_key": raw}, json=BODY))
            keep(api.post(CHAT, headers={"Authorization": f"Bearer {raw[:-1]}x"}, json=BODY))
            keep(api.post(CHAT, headers={"Authorization": f"Bearer {raw} {raw}"}, json=BODY))
            keep(api.post(CHAT, headers={"Authorization": raw}, json=BODY))
            keep(api.get(f"/v1/nope?key={raw}", headers=bearer))
            statuses = [keep(api.post(CHAT, headers=bearer, json=BODY)).status_code for _ in range(8)]
            assert 429 in statuses  # rpm=8 from the form: the limit answered too
            revoked = session.post(
                "/admin/apikeys/apikey/revoke/",
                data={"keys": prefix, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            )
            assert revoked.status_code == 302
            deadline = time.monotonic() + 5
            while keep(api.post(CHAT, headers=bearer, json=BODY)).status_code != 401:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            metrics = keep(api.get("/metrics")).text
        admin_pages = [session.get(path).text for path in ("/admin/apikeys/apikey/", "/admin/apikeys/auditlogentry/")]
    finally:
        session.close()
    assert f'key="{prefix}"' in metrics  # per-key labels are on, by prefix

    assert gateway.stop() == 0  # flushes buffered usage records and every log line
    log = gateway.log
    assert "tollgate.requests" in log and "DEBUG" in log  # the log really was at DEBUG
    secrets_to_hide = {"the client's key": secret, "the upstream key": UPSTREAM_KEY}
    for what, value in secrets_to_hide.items():
        assert value not in log, f"{what} is in the gateway log: {next(ln for ln in log.splitlines() if value in ln)}"
        assert value not in metrics, f"{what} is in /metrics"
        for answer in answers:
            assert value not in answer, f"{what} was sent to a client: {answer[:500]}"
        for html in admin_pages:
            assert value not in html, f"{what} is on an admin page"
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (table names from introspection)
            for row in cursor.fetchall():
                for what, value in secrets_to_hide.items():
                    assert value not in repr(row), f"{what} is stored in {table}: {row!r}"
    # Upstream, only the company's key is presented; the client's key goes nowhere but in the prompt it wrote.
    upstream = fake_upstream.requests()
    assert upstream
    for record in upstream:
        assert record["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert secret not in repr(record["headers"]) and secret not in record["query"]
        assert secret not in record["body"] or record["json"]["messages"][0]["content"] == raw
