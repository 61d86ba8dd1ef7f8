"""Process start and clean shutdown hooks, run by the ASGI lifespan (config/asgi.py) and at interpreter exit.

Modules register with `on_startup(fn)` (run when a serving process starts: background threads that only
gateway workers should run) and `on_shutdown(fn)`; `fn` may be sync or async. Shutdown hooks run once, in reverse
registration order: a usage writer flushes its buffer before the database goes away.
"""

import asyncio
import atexit
import inspect
import logging
import threading

logger = logging.getLogger("tollgate.lifecycle")

_startup_hooks: list = []
_shutdown_hooks: list = []
_shutdown_done = threading.Event()


def on_startup(fn):
    """Run `fn` (sync or async) on the event loop when a served process starts (the ASGI lifespan)."""
    _startup_hooks.append(fn)
    return fn


def on_shutdown(fn):
    _shutdown_hooks.append(fn)
    return fn


async def startup() -> None:
    for fn in _startup_hooks:
        try:
            result = fn()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("startup hook %s failed", getattr(fn, "__qualname__", fn))


async def shutdown() -> None:
    if _shutdown_done.is_set():
        return
    _shutdown_done.set()
    for fn in reversed(_shutdown_hooks):
        try:
            if inspect.iscoroutinefunction(fn):
                await fn()
            else:
                await asyncio.to_thread(fn)
        except Exception:
            logger.exception("shutdown hook %s failed", getattr(fn, "__qualname__", fn))


@atexit.register
def _shutdown_at_exit() -> None:
    # A process that exits without an ASGI lifespan (manage.py commands, tests) still runs the sync hooks.
    if _shutdown_done.is_set():
        return
    _shutdown_done.set()
    for fn in reversed(_shutdown_hooks):
        if inspect.iscoroutinefunction(fn):
            continue
        try:
            fn()
        except Exception:
            logger.exception("shutdown hook %s failed", getattr(fn, "__qualname__", fn))
