"""Argument types of the upstream commands: strict, failing with a one-line message."""

import argparse

from core.commands import StrictCommand

UpstreamCommand = StrictCommand


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def model_list(value: str) -> list[str]:
    models = [part.strip() for part in value.split(",") if part.strip()]
    if not models:
        raise argparse.ArgumentTypeError(f"expected model names like a,b, got {value!r}")
    return models


def alias(value: str) -> tuple[str, str]:
    public, sep, upstream = value.partition("=")
    if not sep or not public.strip() or not upstream.strip():
        raise argparse.ArgumentTypeError(f"expected PUBLIC=UPSTREAM, got {value!r}")
    return public.strip(), upstream.strip()
