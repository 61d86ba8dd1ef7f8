# Tollgate's production image: `docker compose up` (docker-compose.yml) or `docker build -t tollgate .`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production

WORKDIR /app

# Runtime dependencies only (requirements/dev.txt stays out of the image); every one ships a wheel, so no
# compiler is needed. A layer of its own: it is rebuilt only when base.txt changes.
COPY requirements/base.txt requirements/base.txt
RUN pip install --no-cache-dir -r requirements/base.txt \
    && groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app tollgate

COPY . .

# Static files (admin, Swagger UI) are collected and compressed at build; WhiteNoise serves them. Production
# settings refuse to load without their secrets, so collectstatic gets throwaway values that never leave this
# step (it reads no secret and touches no database).
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret OPENAI_API_KEY=collectstatic-only \
    python manage.py collectstatic --noinput -v 0

# The code stays root-owned and read-only to the app; it writes only to /tmp (Prometheus' per-worker files).
USER 10001:10001

EXPOSE 8000

# /readyz answers 200 once the process serves and its database answers (slim images have no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]

ENTRYPOINT ["sh", "/app/deploy/docker-entrypoint.sh"]
CMD ["gunicorn", "-c", "config/gunicorn.conf.py"]
