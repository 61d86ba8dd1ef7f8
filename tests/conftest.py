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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import openai
import pytest
from django.core.management.base import CommandError
from django.db import DatabaseError, connection
from django.db.backends.signals import connection_created
from django.test import TransactionTestCase

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"  # screenshots of the browser tests (gitignored)
# Debian's Chromium: Playwright cannot download its own browser here.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
UPSTREAM_KEY = "sk-upstream-secret-of-the-company-0123456789"


def _deadlocks_pick_the_gateway(sender, connection, **kwargs):
    """Between transactional tests pytest-django empties the tables with one TRUNCATE of all of them, in no fixed
    order, while a live gateway's usage writer may be inserting records and their rollups in one transaction: the
    two can deadlock. PostgreSQL aborts the waiter that checks first, after `deadlock_timeout` (1 s by default): the
    test process waits longer, so the writer is the one aborted, and it retries its batch (which cannot count
    twice), rather than the flush failing the test. Tests connect as a superuser, who may set it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = '10s'")


connection_created.connect(_deadlocks_pick_the_gateway)

_flush_tables = TransactionTestCase._fixture_teardown


def _flush_tables_retrying(self) -> None:
    """The flush between transactional tests, tried again when the database refuses it.

    A live gateway's usage writer may still be writing the records of the test that just ended while the flush runs.
    A CI run once lost a passing test (1 of ~700, right after 1,120 requests on two instances) to a flush the
    database refused despite the deadlock timeout above; its log did not show why. A refused flush is tried twice
    more, and each refusal's cause is printed, so one that is not a passing conflict stays visible and fails."""
    for attempt in range(1, 4):
        try:
            _flush_tables(self)
            return
        except CommandError as exc:
            if attempt == 3 or not isinstance(exc.__cause__, DatabaseError):
                raise
            print(f"\nflush attempt {attempt} failed, trying again: {exc.__cause__!r}", file=sys.stderr)
            time.sleep(attempt)


TransactionTestCase._fixture_teardown = _flush_tables_retrying  # type: ignore[method-assign]


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


def manage_py(*args: str) -> subprocess.CompletedProcess:
    """`python manage.py ARGS` as a real process against the test database (exit code, stdout and stderr apart)."""
    env = {**os.environ, "DATABASE_URL": server_database_url(), "DJANGO_SETTINGS_MODULE": "config.settings.base"}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


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
            # The gateways of one test run share one database: a long-lived gateway of another test (with other
            # settings) would otherwise claim alerts and settle background responses a test is watching. A test
            # that needs them turns them on in its own gateways.
            "ALERT_CHECK_SECONDS": "0",
            "BACKGROUND_POLL_SECONDS": "0",
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
def chromium() -> Path:
    """The browser for Playwright tests: skipped when absent, a failure in CI (TOLLGATE_REQUIRE_BROWSER=1)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver"
        if os.environ.get("TOLLGATE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


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


# -- reliability helpers: worker processes, steady load, recovery times ----------------------------------------------


def child_pids(pid: int) -> set[int]:
    """The pids of the processes whose parent is `pid`, read from /proc."""
    children = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        # The command name (field 2) may contain spaces: the parent pid is the 2nd field after its ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.add(int(entry.name))
    return children


def worker_pids(server: ServerProcess, expected: int, timeout: float = 30.0) -> set[int]:
    """The pids of a gunicorn master's worker processes, once all `expected` of them are running."""
    deadline = time.monotonic() + timeout
    while True:
        pids = child_pids(server.process.pid)
        if len(pids) == expected:
            return pids
        assert time.monotonic() < deadline, f"{len(pids)} workers running, expected {expected}"
        time.sleep(0.1)


def openai_error_problem(response) -> str:
    """An empty string when `response` is an OpenAI-shaped error (see assert_openai_error), else its problem."""
    try:
        assert_openai_error(response, response.status_code)
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        return f"not an OpenAI error: {exc!r}: {response.text[:300]!r}"
    return ""


@dataclass(slots=True)
class Sent:
    """One request of a `SteadyLoad`, as its client saw it."""

    target: int  # index of the URL it went to
    kind: str  # "plain" or "stream"
    started: float  # time.monotonic()
    finished: float
    status: int  # the HTTP status; 0 = no answer (connection refused, reset, timeout)
    request_id: str
    problem: str  # "" when the answer is what its status promises (a whole answer, an OpenAI error), else why not
    code: str = ""  # the error's `code` for an OpenAI-shaped error


class SteadyLoad:
    """Steady traffic from background threads until `stop()`: each thread sends one chat completion after another
    (every `stream_every`-th one streamed) to `urls[thread % len(urls)]`, pausing `pause` s between them.

    With `fresh_connections` each request opens a new connection (`Connection: close`), so consecutive requests
    land on every worker of a gunicorn instance. A 200 counts only if the answer is whole (a plain body with
    choices; a stream with `[DONE]` and no error event); any other status must be an OpenAI-shaped error, else
    `problem` says what was wrong. `stop()` returns every request's `Sent`, in the order they started.
    """

    def __init__(
        self,
        urls,
        raw_key: str,
        *,
        threads: int = 4,
        pause: float = 0.0,
        stream_every: int = 2,
        model: str = "gpt-4o-mini",
        fake: dict | None = None,
        stream_fake: dict | None = None,
        timeout: float = 30.0,
        fresh_connections: bool = True,
    ):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.raw_key = raw_key
        self.threads = threads
        self.pause = pause
        self.stream_every = stream_every
        self.model = model
        self.fake = fake
        self.stream_fake = stream_fake
        self.timeout = timeout
        self.fresh_connections = fresh_connections
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent: list[Sent] = []
        self._workers: list[threading.Thread] = []

    def start(self) -> "SteadyLoad":
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index,), name=f"steady-load-{index}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> list[Sent]:
        self._stop.set()
        for thread in self._workers:
            thread.join(self.timeout + 10)
        assert not any(thread.is_alive() for thread in self._workers), "a load thread did not finish"
        return self.sent()

    def sent(self) -> list[Sent]:
        with self._lock:
            return sorted(self._sent, key=lambda s: s.started)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _run(self, index: int) -> None:
        target = index % len(self.urls)
        headers = {"Authorization": f"Bearer {self.raw_key}"}
        if self.fresh_connections:
            headers["Connection"] = "close"
        with httpx.Client(base_url=self.urls[target], headers=headers, timeout=self.timeout) as session:
            number = index  # threads start at different points of the plain/stream rotation
            while not self._stop.is_set():
                stream = bool(self.stream_every) and number % self.stream_every == self.stream_every - 1
                number += 1
                sent = self._one(session, target, stream, f"steady {index}-{number}")
                with self._lock:
                    self._sent.append(sent)
                if self.pause:
                    self._stop.wait(self.pause)

    def _one(self, session: httpx.Client, target: int, stream: bool, text: str) -> Sent:
        body = {"model": self.model, "messages": [{"role": "user", "content": text}], "stream": stream}
        fake = self.stream_fake if stream else self.fake
        if fake:
            body["fake"] = fake
        started = time.monotonic()
        status, request_id, problem, code = 0, "", "", ""
        try:
            with session.stream("POST", "/v1/chat/completions", json=body) as response:
                status = response.status_code
                request_id = response.headers.get("x-request-id", "")
                response.read()
                if status != 200:
                    problem = openai_error_problem(response)
                    code = "" if problem else str(response.json()["error"]["code"])
                elif stream:
                    text = response.text
                    if "data: [DONE]" not in text or 'data: {"error"' in text:
                        problem = f"incomplete stream: {text[-300:]!r}"
                elif not response.json().get("choices"):
                    problem = f"no choices: {response.text[:300]!r}"
        except (httpx.HTTPError, ValueError) as exc:
            problem = problem or f"{type(exc).__name__}: {exc}"
        kind = "stream" if stream else "plain"
        return Sent(target, kind, started, time.monotonic(), status, request_id, problem, code)


def seconds_until_steady(sent: list[Sent], since: float, good=lambda s: s.status == 200 and not s.problem):
    """Seconds from `since` (time.monotonic()) until every request started from then on was `good`: the start of
    the first request after `since` that begins an unbroken good run to the end. None if the last one failed."""
    after = [s for s in sent if s.started >= since]
    first_good = None
    for s in after:
        first_good = (first_good or s) if good(s) else None
    return None if first_good is None else max(first_good.started - since, 0.0)


def server_password_hash(password: str) -> str:
    """A password hash the live servers accept: the test settings hash with MD5 (fast), which the base settings
    do not list; PBKDF2 with few iterations (a server upgrades it on login)."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher
    from django.utils.crypto import get_random_string

    return PBKDF2PasswordHasher().encode(password, get_random_string(16), iterations=1000)


def admin_login(base_url: str, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    """Log in to a live server's admin through its form, CSRF token and all, as a browser does. Returns the
    session (cookies kept; the caller closes it) and the answer to the login POST (302 when it worked)."""
    session = httpx.Client(base_url=base_url, timeout=30)
    session.get("/admin/login/?next=/admin/").raise_for_status()
    response = session.post(
        "/admin/login/?next=/admin/",
        data={
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "username": username,
            "password": password,
            "next": "/admin/",
        },
    )
    return session, response
