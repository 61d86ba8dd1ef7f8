"""Every write to upstreams, audited: the admin, the commands and tests call these (never `save()` directly)."""

import re
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone

from .crypto import reseal, seal
from .models import Upstream, UpstreamAuditEntry, UpstreamKind

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Fields whose changes the audit entry lists (never the key: only that it changed).
AUDITED = (
    "kind",
    "base_url",
    "organization",
    "project",
    "api_version",
    "weight",
    "priority",
    "models",
    "aliases",
    "rpm",
    "tpm",
    "enabled",
)


class UpstreamInvalid(ValueError):
    """Bad input for an upstream; the message is one line, fit for a command's stderr or an admin form."""


def upstream_clean_fields(fields: dict) -> None:
    """Raise `UpstreamInvalid` for the first field of `fields` (names of an upstream's fields) that is invalid."""
    name = fields.get("name")
    if name is not None and not NAME.fullmatch(name):
        raise UpstreamInvalid(f"name must be lower-case letters, digits, '-' or '_' (at most 64), got {name!r}")
    kind = fields.get("kind")
    if kind is not None and kind not in UpstreamKind.values:
        raise UpstreamInvalid(f"kind must be one of {', '.join(UpstreamKind.values)}, got {kind!r}")
    base_url = fields.get("base_url")
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise UpstreamInvalid(f"base URL must be an http(s) URL without query, got {base_url!r}")
    for field in ("weight",):
        if field in fields and (not isinstance(fields[field], int) or fields[field] < 1):
            raise UpstreamInvalid(f"{field} must be a whole number of at least 1, got {fields[field]!r}")
    for field in ("rpm", "tpm"):
        value = fields.get(field)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UpstreamInvalid(f"{field} must be a whole number of at least 1, got {value!r}")
    if "priority" in fields and not isinstance(fields["priority"], int):
        raise UpstreamInvalid(f"priority must be a whole number, got {fields['priority']!r}")
    models = fields.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m.strip() == m and m for m in models)
    ):
        raise UpstreamInvalid("models must be a list of model names")
    aliases = fields.get("aliases")
    if aliases is not None and (
        not isinstance(aliases, dict)
        or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in aliases.items())
    ):
        raise UpstreamInvalid("aliases must map public model names to upstream model names")


def _audit(*, actor: str, action: str, name: str, changes: dict) -> None:
    UpstreamAuditEntry.objects.create(actor=actor, action=action, upstream_name=name, changes=changes)


@transaction.atomic
def upstream_create(
    *,
    name: str,
    kind: str,
    base_url: str,
    api_key: str,
    actor: str,
    models: list[str] | None = None,
    aliases: dict[str, str] | None = None,
    weight: int = 1,
    priority: int = 0,
    rpm: int | None = None,
    tpm: int | None = None,
    api_version: str = "",
    organization: str = "",
    project: str = "",
    enabled: bool = True,
) -> Upstream:
    """Create an upstream, its key sealed (`upstreams.crypto`). Raises `UpstreamInvalid` (nothing written)."""
    fields = {
        "name": name,
        "kind": kind,
        "base_url": base_url.rstrip("/"),
        "models": list(models or []),
        "aliases": dict(aliases or {}),
        "weight": weight,
        "priority": priority,
        "rpm": rpm,
        "tpm": tpm,
        "api_version": api_version or "",
        "organization": organization or "",
        "project": project or "",
        "enabled": enabled,
    }
    upstream_clean_fields(fields)
    if not api_key or api_key != api_key.strip():
        raise UpstreamInvalid("an API key is required (without surrounding spaces)")
    if fields["api_version"] and kind != UpstreamKind.AZURE:
        raise UpstreamInvalid("--api-version is for azure upstreams only")
    if Upstream.objects.filter(name=name).exists():
        raise UpstreamInvalid(f"an upstream named {name!r} exists already")
    upstream = Upstream.objects.create(api_key_encrypted=seal(api_key), **fields)
    _audit(actor=actor, action="create", name=name, changes={f: [None, getattr(upstream, f)] for f in AUDITED})
    return upstream


@transaction.atomic
def upstream_update(*, upstream: Upstream, actor: str, api_key: str | None = None, **fields) -> Upstream:
    """Change `fields` (names of `AUDITED`) and, when given, the key. Raises `UpstreamInvalid`."""
    unknown = set(fields) - set(AUDITED)
    if unknown:
        raise UpstreamInvalid(f"unknown upstream fields: {', '.join(sorted(unknown))}")
    if "base_url" in fields:
        fields["base_url"] = fields["base_url"].rstrip("/")
    upstream_clean_fields(fields)
    current = Upstream.objects.select_for_update().get(pk=upstream.pk)
    changes = {f: [getattr(current, f), v] for f, v in fields.items() if getattr(current, f) != v}
    kind = fields.get("kind", current.kind)
    if fields.get("api_version", current.api_version) and kind != UpstreamKind.AZURE:
        raise UpstreamInvalid("an API version is for azure upstreams only")
    for field, (_, new) in changes.items():
        setattr(current, field, new)
    if api_key:
        current.api_key_encrypted = seal(api_key)
        changes["api_key"] = ["(hidden)", "(replaced)"]
    if not changes:
        return current
    current.updated_at = timezone.now()
    current.save()
    action = "update"
    if set(changes) == {"enabled"}:
        action = "enable" if current.enabled else "disable"
    _audit(actor=actor, action=action, name=current.name, changes=changes)
    return current


def upstream_set_enabled(*, upstream: Upstream, enabled: bool, actor: str) -> Upstream:
    return upstream_update(upstream=upstream, actor=actor, enabled=enabled)


@transaction.atomic
def upstream_delete(*, upstream: Upstream, actor: str) -> None:
    _audit(actor=actor, action="delete", name=upstream.name, changes={})
    upstream.delete()


@transaction.atomic
def upstream_keys_reencrypt(*, actor: str) -> int:
    """Re-seal every stored key with the first of `UPSTREAM_KEY_ENCRYPTION_KEYS`; the number of rows re-sealed.
    Raises `crypto.KeyEncryptionError` (nothing written) when a key opens with none of them."""
    rows = list(Upstream.objects.select_for_update().exclude(api_key_encrypted=""))
    sealed = [(row, reseal(row.api_key_encrypted)) for row in rows]
    for row, token in sealed:
        Upstream.objects.filter(pk=row.pk).update(api_key_encrypted=token, updated_at=timezone.now())
        _audit(actor=actor, action="reencrypt", name=row.name, changes={})
    return len(sealed)
