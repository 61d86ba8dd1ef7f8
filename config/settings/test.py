"""Test settings: the base settings, with the test database shared with the live servers the tests start."""

import os

from config.env import BASE_DIR

from .base import *  # noqa: F403
from .base import DATABASES

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so that server processes started by the tests see the same database.
    # Named per process so that two test runs on one machine do not share a file.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
