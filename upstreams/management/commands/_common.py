"""Argument types of the upstream commands: strict, failing with a one-line message."""

import argparse

from core.commands import StrictCommand

UpstreamCommand = StrictCommand


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
