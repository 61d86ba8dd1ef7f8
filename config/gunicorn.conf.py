"""gunicorn configuration: `gunicorn -c config/gunicorn.conf.py` serves Tollgate.

`--bind` and `--workers` on the command line override the values here. The app is ASGI (config.asgi) on
uvicorn workers; the README's performance section says why.
"""

import os
import resource
import shutil
import tempfile

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
# Behind a load balancer, list its addresses: uvicorn then takes the client address and scheme from its
# X-Forwarded-For/-Proto headers (the admin's login lockout counts per client address). "*" trusts everyone.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
proc_name = "tollgate"
# gunicorn 25+ opens a control socket at ~/.gunicorn/gunicorn.ctl by default: one path shared by every instance
# on a host (the tests run several), and unwritable for the image's user. Signals (HUP, TTIN, TTOU) remain.
control_socket_disable = True


def on_starting(server):
    _prepare_prometheus_dir(server)
    # Each held stream costs two sockets (client and upstream): raise the soft file limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


# Prometheus multiprocess mode (core/metrics.py): each worker writes its samples to files in
# PROMETHEUS_MULTIPROC_DIR and /metrics sums them. The variable must be set before a worker imports
# prometheus_client, so it is set here, in the arbiter, before the first fork; nothing here imports it earlier.
_created_prometheus_dir = None


def _prepare_prometheus_dir(server):
    global _created_prometheus_dir
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        # An operator-chosen directory: empty it, or the counters of a previous run would be added to ours.
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
    else:
        path = os.path.join(tempfile.gettempdir(), f"tollgate-prometheus-{os.getpid()}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        _created_prometheus_dir = path
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    server.log.info("prometheus multiprocess dir: %s", path)


def child_exit(server, worker):
    # A dead worker's in-flight gauge must stop counting; its counters and histograms stay in the sums.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _created_prometheus_dir:
        shutil.rmtree(_created_prometheus_dir, ignore_errors=True)
