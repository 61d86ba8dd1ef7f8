"""The alert thread of a gateway worker: every `ALERT_CHECK_SECONDS`, scan for new alerts and deliver what is due.

Started by the ASGI lifespan (`core.lifecycle.on_startup`), so only serving processes run it; every worker of every
instance does, and the database keeps each alert to one claim and each delivery to one sender (alerts.services).
With the default 5 s a crossing is delivered within USAGE_FLUSH_SECONDS + 5 s plus the receiver's time.
"""

import logging
import threading

from django.conf import settings
from django.db import connection

logger = logging.getLogger("tollgate.alerts")


class AlertRunner:
    def __init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None or settings.ALERT_CHECK_SECONDS <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tollgate-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(15)

    def _run(self) -> None:
        from .services import alert_deliver_due, alert_scan

        try:
            while not self._stop.wait(settings.ALERT_CHECK_SECONDS):
                try:
                    alert_scan()
                    alert_deliver_due()
                except Exception:  # never let the thread die: the next round retries
                    logger.exception("alerts: scan or delivery failed")
                    connection.close()
        finally:
            connection.close()


alert_runner = AlertRunner()
