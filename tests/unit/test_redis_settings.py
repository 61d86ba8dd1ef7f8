"""The Redis topology settings (config/settings/base.py) are read as the README says, and contradictions stop the
process at start with a message naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
# The settings module alone, in a fresh process (its checks run at import).
PRINT = (
    "from config.settings import base as s; print(s.REDIS_SENTINELS, repr(s.REDIS_SENTINEL_MASTER), s.REDIS_CLUSTER)"
)


def settings_with(**env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    full.update(DJANGO_SETTINGS_MODULE="config.settings.base", DATABASE_URL="sqlite:///unused.sqlite3", **env)
    return subprocess.run([sys.executable, "-c", PRINT], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_sentinels_are_parsed():
    done = settings_with(REDIS_SENTINELS="10.0.0.1:26379, sentinel-b:26380,[::1]:26381", REDIS_SENTINEL_MASTER="mm")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('10.0.0.1', 26379), ('sentinel-b', 26380), ('::1', 26381)] 'mm' False"


def test_the_topology_the_settings_name(settings):
    from core.redis import RedisTopology, redis_topology

    settings.REDIS_URL, settings.REDIS_CLUSTER, settings.REDIS_SENTINELS = "", False, []
    assert redis_topology() is None  # no Redis: limits in the database
    settings.REDIS_URL = "redis://one:6379/3"
    assert redis_topology() == RedisTopology(mode="single", url="redis://one:6379/3")
    settings.REDIS_CLUSTER = True
    assert redis_topology() == RedisTopology(mode="cluster", url="redis://one:6379/3")
    settings.REDIS_CLUSTER = False
    settings.REDIS_SENTINELS, settings.REDIS_SENTINEL_MASTER = [("s1", 26379), ("s2", 26379)], "mm"
    # Sentinel wins over REDIS_URL, which it does not use.
    assert redis_topology() == RedisTopology(mode="sentinel", sentinels=(("s1", 26379), ("s2", 26379)), master="mm")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_SENTINELS": "a:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "a", "REDIS_SENTINEL_MASTER": "m"}, "is not host:port"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_CLUSTER": "true"}, "exclusive"),
        ({"REDIS_CLUSTER": "true"}, "REDIS_CLUSTER=true needs REDIS_URL"),
    ],
)
def test_contradictions_stop_the_process_at_start(env, message):
    done = settings_with(**env)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and message in done.stderr, done.stderr[-500:]
