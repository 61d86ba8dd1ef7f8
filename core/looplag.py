"""The event loop's lag in each worker: a Prometheus histogram, and a warning when one stall passes a threshold.

A worker relays thousands of streams on one event loop; anything that holds the loop (a long computation, a
synchronous call, a garbage collection, a thread holding the GIL) delays every stream of the worker at once.
`LoopLagMonitor` is one task per serving process (started by the ASGI lifespan, `core.lifecycle.on_startup`) that
asks to wake up every `INTERVAL` seconds and measures how late it woke: that delay is the time the loop could not
run anything, up to the timer's millisecond resolution.

* `tollgate_event_loop_lag_seconds{worker}`: histogram of the delays, `worker` being the process id (in
  multiprocess mode the samples of each worker stay apart; a replaced worker's series stay with its counts);
* a `WARNING` on `tollgate.looplag` for each delay over `LOOP_LAG_WARNING_MS` (0 turns the warning off), so
  operators see a stall before users report it.
"""

import asyncio
import logging
import os
import time

from django.conf import settings
from prometheus_client import Histogram

logger = logging.getLogger("tollgate.looplag")

INTERVAL = 0.05  # seconds between two wake-ups: 20 a second cost a few microseconds each
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

LOOP_LAG = Histogram(
    "tollgate_event_loop_lag_seconds",
    "How late the worker's event loop ran a timer due to run: time nothing else could run on it.",
    ("worker",),
    buckets=LAG_BUCKETS,
)


class LoopLagMonitor:
    """Measures the running loop's lag every `interval` seconds until stopped (`start()`, `stop()`)."""

    interval = INTERVAL
    timer = staticmethod(time.perf_counter)

    def __init__(self):
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def run(self) -> None:
        histogram = LOOP_LAG.labels(str(os.getpid()))
        threshold = settings.LOOP_LAG_WARNING_MS / 1000
        interval, timer = self.interval, self.timer
        while True:
            due = timer() + interval
            await asyncio.sleep(interval)
            lag = max(0.0, timer() - due)
            histogram.observe(lag)
            if threshold and lag > threshold:
                logger.warning(
                    "the event loop was blocked for %.0f ms (over LOOP_LAG_WARNING_MS=%g): every request of "
                    "this worker waited",
                    lag * 1000,
                    settings.LOOP_LAG_WARNING_MS,
                    extra={"fields": {"loop_lag_ms": round(lag * 1000, 1), "worker": os.getpid()}},
                )


monitor = LoopLagMonitor()
