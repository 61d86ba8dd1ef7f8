"""The names usage records give the relay's endpoints (`UsageRecord.endpoint`).

The relay declares its endpoints (`completions.endpoints`) and, when its app is ready, registers their names
here with `register`; `usage` may not import the relay (the relay imports `usage`). `known_endpoints()` is then
the declared names in declaration order: what `usage_report --endpoint` accepts and the order of the dashboards'
endpoint tables. A name recorded but not declared (an endpoint since removed) still shows everywhere.
"""

# Records written before Tollgate served several endpoints, and outcomes that name none, are chat completions.
CHAT_COMPLETIONS = "chat.completions"

_known: list[str] = [CHAT_COMPLETIONS]


def register(names) -> None:
    """Add the relay's endpoint names (idempotent; declaration order is kept)."""
    for name in names:
        if name not in _known:
            _known.append(name)


def known_endpoints() -> tuple[str, ...]:
    return tuple(_known)
