"""Usage pictures for the admin (filled in by the usage-accounting issue)."""

from django.utils.safestring import SafeString, mark_safe


def key_usage_panel(api_key) -> SafeString:
    """HTML for a key's admin page: last 30 days of requests, tokens and cost, and spend against budget."""
    return mark_safe("")  # noqa: S308
