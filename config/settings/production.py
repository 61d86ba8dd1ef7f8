"""Production settings: secrets have no defaults, and the deploy checks pass."""

from django.core.exceptions import ImproperlyConfigured

from config.env import env

from .base import *  # noqa: F403


def required(name: str) -> str:
    """The variable's value; ImproperlyConfigured (the process does not start) if it is unset or blank."""
    value = env(name)
    if not value.strip():
        raise ImproperlyConfigured(f"Set the {name} environment variable (it is empty).")
    return value


# CORE
# No default: production refuses to start without a real secret key.
SECRET_KEY = required("DJANGO_SECRET_KEY")
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
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
# Admin sessions end after 8 hours.
SESSION_COOKIE_AGE = 8 * 60 * 60

# UPSTREAM
# No default: a production gateway without an upstream key cannot serve anything. Upstreams defined in the database
# (README "Upstreams") carry their own keys, sealed with UPSTREAM_KEY_ENCRYPTION_KEYS: with that set, the default
# upstream's key may be left out (the default upstream is used only while no upstream is defined).
if not env("UPSTREAM_KEY_ENCRYPTION_KEYS", default="").strip():
    OPENAI_API_KEY = required("OPENAI_API_KEY")

# STATIC
# collectstatic runs at image build (Dockerfile): WhiteNoise serves the compressed, content-hashed copies
# with far-future cache headers, and never looks in the app directories.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = False

# LOGGING
# One JSON object per line by default, for log collectors.
LOG_FORMAT = env("LOG_FORMAT", default="json")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}.")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT
