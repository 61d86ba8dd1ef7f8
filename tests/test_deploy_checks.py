"""Production settings: `check --deploy` is clean, missing secrets stop the process, and a production server sends
the security headers, secure cookies and static files, and locks out an admin login under brute force."""

import os
import re
import secrets
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT

PRODUCTION = "config.settings.production"


def production_env(**overrides) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": PRODUCTION,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "OPENAI_API_KEY": "sk-test-upstream",
        "DJANGO_ALLOWED_HOSTS": "example.com",
        **overrides,
    }
    return {name: value for name, value in env.items() if value is not None}


def manage(*args, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_check_deploy_passes_with_no_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_check_deploy_would_catch_an_insecure_setting():
    """The check is a real one: a short secret key is a warning, and the warning fails the command."""
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(DJANGO_SECRET_KEY="short"))
    assert result.returncode != 0
    assert "security.W009" in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["DJANGO_SECRET_KEY", "OPENAI_API_KEY"])
def test_production_refuses_to_start_with_a_blank_secret(name):
    result = manage("check", env=production_env(**{name: "  "}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and name in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("name", ["DJANGO_SECRET_KEY", "OPENAI_API_KEY"])
def test_production_refuses_to_start_without_a_secret(name):
    if (ROOT / ".env").exists():
        pytest.skip("a local .env file may define the variable")
    result = manage("check", env=production_env(**{name: None}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and name in result.stderr, result.stderr[-2000:]


def test_production_with_defined_upstreams_needs_no_default_upstream_key():
    if (ROOT / ".env").exists():
        pytest.skip("a local .env file may define the variable")
    sealing = "vQ9yWm3b6B7o0Zb0z8t5l1aJt0bHq8kGQx3vW6yA0cU="  # a Fernet key: 32 bytes, URL-safe base64
    result = manage("check", env=production_env(OPENAI_API_KEY=None, UPSTREAM_KEY_ENCRYPTION_KEYS=sealing))
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def production_static(tmp_path_factory):
    """collectstatic with the production storage (compressed, hashed), as the Docker build runs it."""
    static_root = tmp_path_factory.mktemp("staticfiles")
    result = manage(
        "collectstatic", "--noinput", "-v", "0", env=production_env(DJANGO_STATIC_ROOT=str(static_root)), timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert (static_root / "staticfiles.json").exists()
    return static_root


@pytest.fixture
def production_gateway(start_gateway, production_static):
    return start_gateway(
        name="production",
        env={
            "DJANGO_SETTINGS_MODULE": PRODUCTION,
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DJANGO_STATIC_ROOT": str(production_static),
        },
    )


def https_headers(gateway, **extra) -> dict:
    """What a TLS-terminating load balancer adds in front of the instance."""
    return {"X-Forwarded-Proto": "https", "Referer": f"https://127.0.0.1:{gateway.port}/admin/login/", **extra}


def test_security_headers_secure_cookies_and_static_files(production_gateway):
    gateway = production_gateway
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        plain = http.get("/admin/login/")
        assert plain.status_code == 301
        assert plain.headers["location"] == f"https://127.0.0.1:{gateway.port}/admin/login/"

        page = http.get("/admin/login/", headers=https_headers(gateway))
        assert page.status_code == 200, page.text[:500]
        headers = page.headers
        assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "same-origin"
        assert headers["cross-origin-opener-policy"] == "same-origin"
        cookie = next(c for c in headers.get_list("set-cookie") if c.startswith("csrftoken="))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"secure", "httponly", "samesite"} <= attributes, cookie
        assert "samesite=lax" in cookie.lower()

        # The page links the hashed copies collectstatic made; WhiteNoise serves them compressed, cached forever.
        css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page.text)
        assert css, page.text[:1000]
        asset = http.get(css.group(1), headers=https_headers(gateway, **{"Accept-Encoding": "gzip"}))
        assert asset.status_code == 200
        assert asset.headers["content-encoding"] == "gzip"
        assert "immutable" in asset.headers["cache-control"]
        assert "body" in asset.text


def test_admin_login_is_locked_out_after_repeated_failures(production_gateway, transactional_db):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    password = secrets.token_urlsafe(16)
    user = get_user_model().objects.create_superuser("ops", "ops@example.com", None)
    # Hashed as production hashes (the test settings use a fast hasher the production server does not know).
    user.password = PBKDF2PasswordHasher().encode(password, PBKDF2PasswordHasher().salt())
    user.save(update_fields=["password"])
    gateway = production_gateway

    def attempt(http, secret):
        # httpx does not send Secure cookies to an http:// URL; the load balancer would have, so send it by hand.
        page = http.get("/admin/login/", headers=https_headers(gateway))
        token = page.cookies["csrftoken"]
        form_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return http.post(
            "/admin/login/?next=/admin/",
            data={"username": "ops", "password": secret, "csrfmiddlewaretoken": form_token, "next": "/admin/"},
            headers=https_headers(gateway, Cookie=f"csrftoken={token}"),
        )

    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        ok = attempt(http, password)
        assert ok.status_code == 302 and ok.headers["location"] == "/admin/", ok.text[:500]

        statuses = [attempt(http, "wrong-password").status_code for _ in range(5)]
        assert statuses[:4] == [200] * 4  # the form again, with an error
        assert statuses[4] == 429  # AXES_FAILURE_LIMIT=5: locked out

        locked = attempt(http, password)
        assert locked.status_code == 429, "the right password does not help while locked out"
        assert "sessionid" not in locked.headers.get("set-cookie", "")
