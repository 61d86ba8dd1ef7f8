"""Every value Tollgate reads from the environment, read here and nowhere else.

Settings modules import `env` and the typed values below; application code reads `django.conf.settings`.
A `.env` file beside `manage.py` is loaded if present (real environment variables win).
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
