"""Settings shared by every environment. The zero-setup defaults (SQLite, no Redis) live here."""

import warnings

from django.core.exceptions import ImproperlyConfigured

from config.env import BASE_DIR, env

# CORE
SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-dev-only-key-change-me-in-production-0123456789")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "core",
    "apikeys",
    "metering",
    "usage",
    "serverstate",
    "upstreams",
    "completions",
    "manageapi",
    "alerts",
]

# MIDDLEWARE
# The browser side (admin). API paths are served by config.asgi's lean handler with API_MIDDLEWARE
# instead: Django's MiddlewareMixin classes cost two thread hops per request under ASGI.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "config.middleware.request_id_middleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out admin login into its lockout response.
    "axes.middleware.AxesMiddleware",
]
API_MIDDLEWARE = [
    "config.middleware.request_id_middleware",
]
# Paths served by the lean API handler (prefix match).
API_PATH_PREFIXES = ("/v1/", "/api/route", "/healthz", "/readyz", "/metrics")

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASES
# SQLite file by default (zero setup); Postgres via DATABASE_URL in CI and production.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several worker processes share the file: WAL lets readers run beside the writer, IMMEDIATE takes the
    # write lock at BEGIN so two writers queue on busy_timeout instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# REDIS
# Optional. With REDIS_URL (or Sentinel, below), rate limits and budget reservations live in Redis
# (metering/redis_store.py); without it they go through the database (exact too, slower). Key changes reach the
# workers through the database either way (apikeys/keycache.py polls KeyGeneration).
REDIS_URL = env("REDIS_URL", default="")
# Topology (core/redis.py builds every client; README "Redis Cluster and Sentinel"). REDIS_CLUSTER=true: REDIS_URL is
# a seed node of a Redis Cluster. REDIS_SENTINELS=host:port,... with REDIS_SENTINEL_MASTER=name: Sentinel, every
# command to the master the sentinels name (REDIS_URL is then not used).
REDIS_CLUSTER = env.bool("REDIS_CLUSTER", default=False)
REDIS_SENTINEL_MASTER = env("REDIS_SENTINEL_MASTER", default="")
REDIS_SENTINELS: list[tuple[str, int]] = []
for _sentinel in env.list("REDIS_SENTINELS", default=[]):
    _host, _, _port = _sentinel.strip().rpartition(":")
    if not _host or not _port.isdigit():
        raise ImproperlyConfigured(f"REDIS_SENTINELS: {_sentinel!r} is not host:port.")
    REDIS_SENTINELS.append((_host.strip("[]"), int(_port)))
if REDIS_SENTINELS and not REDIS_SENTINEL_MASTER:
    raise ImproperlyConfigured("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER (the master's name) is not.")
if REDIS_SENTINELS and REDIS_CLUSTER:
    raise ImproperlyConfigured("REDIS_CLUSTER and REDIS_SENTINELS are exclusive: a Cluster fails over by itself.")
if REDIS_CLUSTER and not REDIS_URL:
    raise ImproperlyConfigured("REDIS_CLUSTER=true needs REDIS_URL, a node of the cluster.")

# CACHES
# Nothing of Tollgate's uses Django's cache framework, and neither do its apps as configured (sessions and
# django-axes' lockout counts are in the database): Django's per-process default, stated here.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# UPSTREAM (OpenAI or any OpenAI-compatible server)
OPENAI_API_KEY = env("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env("OPENAI_BASE_URL", default="https://api.openai.com/v1")
OPENAI_TIMEOUT = env.float("OPENAI_TIMEOUT", default=600.0)
OPENAI_CONNECT_TIMEOUT = env.float("OPENAI_CONNECT_TIMEOUT", default=10.0)
# Upstream connections per worker process; 1,000+ concurrent streams each hold one.
UPSTREAM_MAX_CONNECTIONS = env.int("UPSTREAM_MAX_CONNECTIONS", default=4096)
# How completions are sent: "sdk" (default: the openai SDK client's own HTTP client and connection pool, aiohttp
# transport, with the request prepared once per worker), "aiohttp" (a separate aiohttp pool: ~10-20% more
# throughput, bypasses the SDK's client) or "httpx" (an httpx2 pool). README, Performance.
UPSTREAM_HTTP_CLIENT = env.str("UPSTREAM_HTTP_CLIENT", default="sdk")

# UPSTREAMS (upstreams/; README "Upstreams"). Without any Upstream row, OPENAI_API_KEY/OPENAI_BASE_URL are the one.
# Fernet keys (URL-safe base64 of 32 bytes), comma-separated: the first encrypts stored upstream keys, all decrypt.
UPSTREAM_KEY_ENCRYPTION_KEYS = env("UPSTREAM_KEY_ENCRYPTION_KEYS", default="")
# Upstreams tried for one request (the first and the ones it fails over to).
UPSTREAM_MAX_ATTEMPTS = env.int("UPSTREAM_MAX_ATTEMPTS", default=3)
# Seconds one upstream may take to start its answer (status and headers) before the request fails over to the next
# (0: no bound of its own, only OPENAI_TIMEOUT). A plain answer's head comes once it is complete: allow for that.
UPSTREAM_FIRST_BYTE_TIMEOUT = env.float("UPSTREAM_FIRST_BYTE_TIMEOUT", default=0.0)
# Failures within the window that make an upstream rest, and how long it rests.
UPSTREAM_FAILURE_THRESHOLD = env.int("UPSTREAM_FAILURE_THRESHOLD", default=3)
UPSTREAM_FAILURE_WINDOW_SECONDS = env.float("UPSTREAM_FAILURE_WINDOW_SECONDS", default=10.0)
UPSTREAM_COOLDOWN_SECONDS = env.float("UPSTREAM_COOLDOWN_SECONDS", default=30.0)
# The longest rest an upstream's 429 `retry-after` can ask for.
UPSTREAM_MAX_REST_SECONDS = env.float("UPSTREAM_MAX_REST_SECONDS", default=300.0)
# How often each worker reloads the upstream table, and reads which upstreams rest.
UPSTREAM_CACHE_SECONDS = env.float("UPSTREAM_CACHE_SECONDS", default=2.0)
UPSTREAM_HEALTH_CHECK_SECONDS = env.float("UPSTREAM_HEALTH_CHECK_SECONDS", default=0.25)

# REQUESTS
MAX_REQUEST_BODY_MB = env.float("MAX_REQUEST_BODY_MB", default=20.0)
MAX_REQUEST_BODY_BYTES = int(MAX_REQUEST_BODY_MB * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

# KEYS
# How often each worker checks whether any key changed (revoked, rotated, edited); bounds how long a
# revoked key can keep working on an instance that cached it.
KEY_CACHE_CHECK_SECONDS = env.float("KEY_CACHE_CHECK_SECONDS", default=0.25)

# USAGE RECORDS
# Written by a background thread per worker in batches (usage/writer.py), never on the request path.
USAGE_FLUSH_SECONDS = env.float("USAGE_FLUSH_SECONDS", default=0.2)
USAGE_BATCH_SIZE = env.int("USAGE_BATCH_SIZE", default=500)
# Records held in memory while the database is unreachable; past this the oldest are written to the error log.
USAGE_MAX_BUFFERED = env.int("USAGE_MAX_BUFFERED", default=100_000)
# Days of usage records kept: what `manage.py purge_usage` removes without --older-than (run it from cron; nothing
# purges by itself). Hourly rollups are kept forever. README "Capacity planning".
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=90)

# RATE LIMITS (metering/throttling.py, metering/; README "Rate limits")
# Project-wide defaults for keys whose own field is empty; unset = unlimited.
RATE_LIMIT_DEFAULT_RPM = env.int("RATE_LIMIT_DEFAULT_RPM", default=None)
RATE_LIMIT_DEFAULT_TPM = env.int("RATE_LIMIT_DEFAULT_TPM", default=None)
RATE_LIMIT_DEFAULT_MAX_CONCURRENT = env.int("RATE_LIMIT_DEFAULT_MAX_CONCURRENT", default=None)
# Completion tokens reserved against tokens/min for a request that sets no max_tokens/max_completion_tokens
# (capped to what the key's limit leaves after the prompt); settled to the real usage afterwards.
RATE_LIMIT_DEFAULT_MAX_TOKENS = env.int("RATE_LIMIT_DEFAULT_MAX_TOKENS", default=1024)
# Limiter store unreachable: false = answer 503 (nothing passes unmetered), true = admit and log a warning.
RATE_LIMIT_FAIL_OPEN = env.bool("RATE_LIMIT_FAIL_OPEN", default=False)
# Seconds a limiter call to Redis may take before the store counts as down (connect and read).
RATE_LIMIT_REDIS_TIMEOUT = env.float("RATE_LIMIT_REDIS_TIMEOUT", default=0.5)
# An in-flight slot (concurrency, budget reservation) whose worker never settled it (crash, kill -9) is
# dropped after this long; longer than any request can legitimately take.
RATE_LIMIT_INFLIGHT_EXPIRY_SECONDS = env.float("RATE_LIMIT_INFLIGHT_EXPIRY_SECONDS", default=OPENAI_TIMEOUT + 60)
RATE_LIMIT_REDIS_PREFIX = env("RATE_LIMIT_REDIS_PREFIX", default="tollgate")

# BACKGROUND RESPONSES (completions/background.py)
# How often each worker looks for background responses to follow, and how long it waits before polling a running
# one again; a response is settled within about this long after it ends. 0: this instance follows none (another must).
BACKGROUND_POLL_SECONDS = env.float("BACKGROUND_POLL_SECONDS", default=2.0)

# BUDGETS AND PRICES (usage/pricing.py; prices are ModelPrice rows, editable in the admin)
# How often each worker reloads the price table (the request path itself never queries it).
PRICE_CACHE_SECONDS = env.float("PRICE_CACHE_SECONDS", default=5.0)
# Price for a model no ModelPrice row matches, USD per million tokens. 0 = such requests cost nothing and
# are not held back by budgets (a warning is logged once per model and process): price every model you allow.
PRICE_FALLBACK_INPUT_PER_MILLION = env.float("PRICE_FALLBACK_INPUT_PER_MILLION", default=0.0)
PRICE_FALLBACK_OUTPUT_PER_MILLION = env.float("PRICE_FALLBACK_OUTPUT_PER_MILLION", default=0.0)
PRICE_FALLBACK_MAX_OUTPUT_TOKENS = env.int("PRICE_FALLBACK_MAX_OUTPUT_TOKENS", default=16384)

# ALERTS (alerts/; README "Budget alerts")
# Budget thresholds crossed and keys about to expire: POSTed (signed) to this URL and emailed to owners and team
# admins. Empty URL: no webhook.
ALERT_WEBHOOK_URL = env("ALERT_WEBHOOK_URL", default="")
# HMAC-SHA256 key of the X-Tollgate-Signature header; empty: alerts are sent unsigned.
ALERT_WEBHOOK_SECRET = env("ALERT_WEBHOOK_SECRET", default="")
# How often each gateway worker scans for alerts and sends due deliveries; 0 turns the alert thread off.
ALERT_CHECK_SECONDS = env.float("ALERT_CHECK_SECONDS", default=5.0)
# Tries of one delivery (2, 4, 8, … s apart) before it is marked failed.
ALERT_MAX_ATTEMPTS = env.int("ALERT_MAX_ATTEMPTS", default=8)

# EMAIL (Django's email backend: alerts to key owners and team admins)
# smtp://user:password@host:587, smtp+tls://…, consolemail:// (the default: printed to stderr), filemail:///dir.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="tollgate@localhost")

# AUTH (admin users)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# REST FRAMEWORK
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apikeys.authentication.BearerAPIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.negotiation.AnyAcceptNegotiation",
    "EXCEPTION_HANDLER": "core.errors.openai_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

# I18N
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# STATIC
STATIC_URL = "static/"
# Where collectstatic writes (the Docker image builds it in; a read-only deployment may point elsewhere).
STATIC_ROOT = env("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
# WhiteNoise serves /static/ from the app directories without collectstatic here; production serves the
# compressed, hashed copies collectstatic builds into STATIC_ROOT (config/settings/production.py).
WHITENOISE_USE_FINDERS = True
# Before any collectstatic STATIC_ROOT does not exist, and WhiteNoise would warn about it in every worker.
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)

# LOGGING
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
# "plain" (one readable line) or "json" (one JSON object per line, the production default).
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}.")
# Put each request's `messages` in its log line. Off by default: prompts are the users' data.
LOG_PROMPTS = env.bool("LOG_PROMPTS", default=False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "core.logging.PlainFormatter"},
        "json": {"()": "core.logging.JSONFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # The SDK logs request headers at DEBUG; keep it quiet so no key can reach a log line.
        "openai": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},  # the SDK's transport: one INFO line per upstream call otherwise
        # Django logs every 4xx as a WARNING ("Not Found: /v1/chat/completions"); the request line says more.
        "django.request": {"level": "ERROR"},
    },
}

# METRICS (GET /metrics, Prometheus text format; core/metrics.py)
# Label request, token and rejection metrics by key prefix: one time series per key, so off by default.
METRICS_PER_KEY = env.bool("METRICS_PER_KEY", default=False)
# When set, /metrics requires `Authorization: Bearer <METRICS_TOKEN>`.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
# Log a warning when a worker's event loop is held this long (tollgate_event_loop_lag_seconds; 0: never).
LOOP_LAG_WARNING_MS = env.float("LOOP_LAG_WARNING_MS", default=100.0)

# SECURITY (admin login): django-axes locks a username out from an address after repeated failures.
# The database handler counts attempts in the shared database, so every worker and instance agrees.
AUTHENTICATION_BACKENDS = [
    "config.auth_backends.AdminLoginBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
# Hours; a float (0.25 = 15 minutes).
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Not verbose: no startup banner in every process, and failure lines carry only the lockout parameters.
AXES_VERBOSE = False
# The client address is REMOTE_ADDR only (never a client-sent X-Forwarded-For, which would let an attacker
# pick a new address per attempt); behind a load balancer gunicorn's FORWARDED_ALLOW_IPS fills it in.
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)

# OPENAPI (drf-spectacular: /api/schema/, Swagger UI at /api/docs/; completions/schema.py)
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate API",
    "DESCRIPTION": (
        "A self-hosted gateway in front of the OpenAI API. Requests and answers are OpenAI's own "
        "(`POST /v1/chat/completions`); Tollgate adds per-key authentication, rate limits and budgets."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its UI are public documentation: no API key needed to read them.
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Served from the drf-spectacular-sidecar package: no CDN (and no internet) needed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "completions.schema.describe_cross_field_rules",
    ],
}
