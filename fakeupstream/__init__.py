"""Tollgate's fake upstream: a real, fast, deterministic OpenAI-compatible HTTP server.

Used as the upstream of the test suite, as the offline upstream of ``make run`` and by ``make bench``.

Run it with ``python -m fakeupstream [--host 127.0.0.1] [--port 9100] [--require-key KEY] [--no-record]``
(it prints exactly one line, ``fakeupstream listening on http://HOST:PORT``, once it accepts connections),
or in-process with :func:`fakeupstream.server.serve_in_thread`.

``POST /v1/chat/completions`` replies ``"echo: " + <text of the last message>`` (or ``"tok0 tok1 ..."``
with ``fake.chunks``), plain or streamed as SSE.  ``POST /v1/completions`` (legacy text completions, plain or
streamed; ``max_tokens`` default 16, ``n``, ``best_of``, ``echo``), ``POST /v1/embeddings`` (deterministic unit
vectors, ``float`` or ``base64``, ``dimensions``) and ``POST /v1/moderations`` (flags by trigger words) are
described in :mod:`fakeupstream.text_completions`, :mod:`fakeupstream.embeddings` and
:mod:`fakeupstream.moderations`.  Token counts are one per word (one per id for token arrays), plus 3 per chat
message.  The extra body field ``"fake"`` (an object) steers every endpoint: ``chunks``, ``chunk_delay_ms``,
``delay_ms``, ``status`` (+ ``error_body``, ``content_type``, ``headers``), ``garbage``, ``hang``,
``cut_after_chunks``, ``usage`` and ``bad_usage`` (``prompt_tokens`` reported as ``"abc"`` or the value
given); a switch that means nothing on embeddings or moderations (a stream switch, or ``usage`` on a
moderation) is a 400.  See :class:`fakeupstream.completions.FakeSwitches`.

Test introspection (not under ``/v1``): ``GET``/``DELETE /_fake/requests`` (ring buffer of the last 2,000
``/v1/*`` requests, newest last) and ``GET``/``DELETE /_fake/stats``
(``{"open_streams", "completed", "client_disconnects"}``; ``DELETE`` zeroes the two totals).
"""

from fakeupstream.server import FakeUpstream, serve_in_thread

__all__ = ["FakeUpstream", "serve_in_thread"]
