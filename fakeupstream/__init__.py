"""Tollgate's fake upstream: a real, fast, deterministic OpenAI-compatible HTTP server.

Used as the upstream of the test suite, as the offline upstream of ``make run`` and by ``make bench``.

Run it with ``python -m fakeupstream [--host 127.0.0.1] [--port 9100] [--require-key KEY] [--no-record]``
(it prints exactly one line, ``fakeupstream listening on http://HOST:PORT``, once it accepts connections),
or in-process with :func:`fakeupstream.server.serve_in_thread`.

``POST /v1/chat/completions`` replies ``"echo: " + <text of the last message>`` (or ``"tok0 tok1 ..."``
with ``fake.chunks``), plain or streamed as SSE.  The extra body field ``"fake"`` (an object) steers it:
``chunks``, ``chunk_delay_ms``, ``delay_ms``, ``status`` (+ ``error_body``, ``content_type``,
``headers``), ``garbage``, ``hang``, ``cut_after_chunks`` and ``usage``; see
:class:`fakeupstream.completions.FakeSwitches` and :func:`fakeupstream.completions.parse_chat_request`.

Test introspection (not under ``/v1``): ``GET``/``DELETE /_fake/requests`` (ring buffer of the last 2,000
``/v1/*`` requests, newest last) and ``GET``/``DELETE /_fake/stats``
(``{"open_streams", "completed", "client_disconnects"}``; ``DELETE`` zeroes the two totals).
"""

from fakeupstream.server import FakeUpstream, serve_in_thread

__all__ = ["FakeUpstream", "serve_in_thread"]
