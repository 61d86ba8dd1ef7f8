"""Show a raw key once, on the page after the POST that created it, without storing it anywhere.

The admin redirects after creating or rotating a key (so that reloading cannot create another one), and the
raw key has to survive that redirect. It is split in two one-time-pad halves: a random pad kept in the session
under a random token, and `raw XOR pad` carried in the redirect URL. Neither half alone says anything about
the key; the database (session table) only ever holds the pad, browser history and access logs only the
ciphertext. The first display pops the pad from the session, so the page cannot be shown again.
"""

import base64
import secrets
import time
from urllib.parse import urlencode

SESSION_KEY = "tollgate_key_reveal"
# A reveal not looked at within this time is dropped (the admin closed the tab, the redirect failed).
REVEAL_TTL_SECONDS = 600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _live(entries: dict, now: float) -> dict:
    return {token: entry for token, entry in entries.items() if now - entry.get("at", 0) < REVEAL_TTL_SECONDS}


def reveal_stash(request, items: list[dict]) -> str:
    """Keep `items` (dicts with a `raw` key and JSON-able display fields) for one display; return the query
    string (`t=…&c=…`) of the page that shows them."""
    now = time.time()
    pads, ciphers, shown = [], [], []
    for item in items:
        raw = item["raw"].encode("ascii")
        pad = secrets.token_bytes(len(raw))
        pads.append(_b64(pad))
        ciphers.append(_b64(_xor(raw, pad)))
        shown.append({k: v for k, v in item.items() if k != "raw"})
    token = secrets.token_urlsafe(16)
    entries = _live(request.session.get(SESSION_KEY, {}), now)
    entries[token] = {"at": now, "pads": pads, "items": shown}
    request.session[SESSION_KEY] = entries
    return urlencode({"t": token, "c": ".".join(ciphers)})


def reveal_take(request) -> list[dict] | None:
    """The items stashed for this request's `t` and `c` query parameters, each with its `raw` key, or None when
    there is nothing to show (already shown, expired, tampered with). Forgets them either way."""
    token = request.GET.get("t", "")
    entries = request.session.get(SESSION_KEY, {})
    entry = entries.pop(token, None)
    request.session[SESSION_KEY] = _live(entries, time.time())
    if entry is None or time.time() - entry.get("at", 0) >= REVEAL_TTL_SECONDS:
        return None
    ciphers = request.GET.get("c", "").split(".")
    if len(ciphers) != len(entry["pads"]):
        return None
    items = []
    for item, pad, cipher in zip(entry["items"], entry["pads"], ciphers, strict=True):
        try:
            raw = _xor(_unb64(cipher), _unb64(pad)).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return None
        if not raw.startswith(f"{item.get('prefix', '')}."):
            return None
        items.append({**item, "raw": raw})
    return items
