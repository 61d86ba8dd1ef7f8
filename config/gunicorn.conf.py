"""gunicorn configuration: `gunicorn -c config/gunicorn.conf.py` serves Tollgate.

`--bind` and `--workers` on the command line override the values here. The app is ASGI (config.asgi) on
uvicorn workers; the README's performance section says why.
"""

import os
import resource

wsgi_app = "config.asgi:application"
worker_class = "config.workers.TollgateUvicornWorker"
bind = os.environ.get("TOLLGATE_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Long streams are normal: a worker is only killed if its event loop stops answering for this long.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 75
# Thousands of held streams queue here while workers accept them.
backlog = 4096
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "tollgate"


def on_starting(server):
    # Each held stream costs two sockets (client and upstream): raise the soft file limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
