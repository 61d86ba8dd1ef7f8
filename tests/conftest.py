"""Shared fixtures: a real fake upstream, real gateway servers (gunicorn + uvicorn workers), keys, SDK clients.

Servers run as subprocesses against the pytest-django test database (Postgres when DATABASE_URL is set, a
SQLite file otherwise) and the test Redis when REDIS_URL is set, exactly as in production. Tests that talk to
a server must commit what they create: use the `transactional_db` fixture (the `api_key` fixture does).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import openai
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-upstream-secret-of-the-company-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0, process=None, log_path=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            log = Path(log_path).read_text() if log_path else ""
            raise RuntimeError(f"server exited with {process.returncode} before answering:\n{log[-4000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def server_database_url() -> str:
    """The URL of the database pytest-django set up, for server subprocesses."""
    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{s['NAME']}"
    auth = quote(s["USER"] or "")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"])
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class ServerProcess:
    """A subprocess with its combined output in a log file; stopped with SIGTERM (a clean shutdown)."""

    def __init__(self, argv, env, log_path: Path, health_url: str):
        self.log_path = log_path
        self.health_url = health_url
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_http(health_url, process=self.process, log_path=log_path)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Gateway(ServerProcess):
    """A Tollgate instance: `gunicorn -c config/gunicorn.conf.py`, as production runs it."""

    def __init__(self, *, upstream_url: str, log_path: Path, workers: int = 2, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.base",
            "DATABASE_URL": server_database_url(),
            "OPENAI_BASE_URL": f"{upstream_url}/v1",
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        argv = [
            sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
        ]  # fmt: skip
        super().__init__(argv, full_env, log_path, f"{self.url}/healthz")

    def client(self, raw_key: str, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=raw_key, **kwargs)

    def async_client(self, raw_key: str, **kwargs) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=raw_key, **kwargs)


class FakeUpstream(ServerProcess):
    def __init__(self, log_path: Path, extra_args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "fakeupstream", "--port", str(self.port), "--require-key", UPSTREAM_KEY,
            *extra_args,
        ]  # fmt: skip
        super().__init__(argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, log_path, f"{self.url}/_fake/stats")

    def requests(self) -> list[dict]:
        return httpx.get(f"{self.url}/_fake/requests", timeout=5).json()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_fake/requests", timeout=5)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_fake/stats", timeout=5).json()


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def fake_upstream(server_logs):
    server = FakeUpstream(server_logs / "fake-upstream.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(django_db_setup, django_db_blocker, fake_upstream, server_logs):
    """The shared gateway: two uvicorn workers under gunicorn, on the test database (and Redis if configured)."""
    with django_db_blocker.unblock():
        server = Gateway(upstream_url=fake_upstream.url, log_path=server_logs / "gateway.log")
    yield server
    server.stop()


@pytest.fixture
def start_gateway(django_db_setup, django_db_blocker, fake_upstream, server_logs):
    """Start extra gateways (other settings, a second instance); all are stopped after the test."""
    started = []

    def start(name="extra", upstream_url=None, **kwargs):
        with django_db_blocker.unblock():
            server = Gateway(
                upstream_url=upstream_url or fake_upstream.url,
                log_path=server_logs / f"{name}-{len(started)}-{time.monotonic_ns()}.log",
                **kwargs,
            )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def make_key(transactional_db):
    """Create committed keys through the service: `make_key(name="x", rpm=40, ...) -> (APIKey, raw)`."""
    from apikeys.services import api_key_create

    def make(name="test-key", **fields):
        return api_key_create(name=name, actor="test", **fields)

    return make


@pytest.fixture
def api_key(make_key):
    return make_key()


@pytest.fixture
def client(gateway, api_key) -> openai.OpenAI:
    """The official SDK pointed at the gateway with a fresh key (no SDK retries)."""
    return gateway.client(api_key[1])


@pytest.fixture
def async_client(gateway, api_key) -> openai.AsyncOpenAI:
    return gateway.async_client(api_key[1])


@pytest.fixture
def http(gateway):
    """A plain HTTP client for what the SDK cannot send (malformed bodies, odd headers)."""
    with httpx.Client(base_url=gateway.url, timeout=30) as session:
        yield session


def assert_openai_error(response, status: int, *, type_=None, code=None, param=None):
    """The response is `status` with an OpenAI-shaped JSON error body; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if type_ is not None:
        assert error["type"] == type_, error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers.get("x-request-id", "")), response.headers
    return error
