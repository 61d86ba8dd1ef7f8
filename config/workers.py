"""The gunicorn worker class: uvicorn on uvloop and httptools, with the ASGI lifespan on."""

from uvicorn_worker import UvicornWorker


class TollgateUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {
        "loop": "uvloop",
        "http": "httptools",
        # Lifespan "on": a clean shutdown flushes buffered usage records (config/asgi.py).
        "lifespan": "on",
        # One JSON line per request is logged by Tollgate itself; uvicorn's access log would double it.
        "access_log": False,
        "timeout_keep_alive": 75,
    }
