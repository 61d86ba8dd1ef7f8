"""Production settings: secrets have no defaults, and the deploy checks pass."""

from config.env import env

from .base import *  # noqa: F403

# CORE
# No default: production refuses to start without a real secret key.
SECRET_KEY = env("DJANGO_SECRET_KEY")
DEBUG = False

# SECURITY
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# UPSTREAM
# No default: a production gateway without an upstream key cannot serve anything.
OPENAI_API_KEY = env("OPENAI_API_KEY")
