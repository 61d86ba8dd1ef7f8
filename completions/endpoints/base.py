"""What an endpoint declares: everything particular to it, and nothing of the pipeline (`completions.relay`).

An `Endpoint` names its paths and its upstream path, how its body is validated (`parse`), how many input tokens
it will cost before the upstream says (`estimate_input`), where its usage sits in a JSON answer and in its
stream (`read_usage`, `stream`), whether it generates output tokens and whether it costs money. The pipeline
derives the request's `metering.Demand` from these, so limits and budgets need no knowledge of any endpoint.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metering.throttling import Demand

from ..usage import NO_USAGE, Usage
from ..validation import ParsedRequest


def body_usage_field(read: Callable[[Any], Usage]) -> Callable[[dict], Usage | None]:
    """A reader of the top-level `usage` object of an answer (None when the answer has none)."""

    def read_body(body: dict) -> Usage | None:
        usage = body.get("usage")
        return None if usage is None else read(usage)

    return read_body


def no_usage(body: dict) -> Usage:
    """For endpoints the upstream reports no tokens for (moderations): zero, and not an estimate."""
    return NO_USAGE


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One relayed endpoint, declared.

    * `name`: its name in usage records, logs, metrics and `usage_report --endpoint` (`chat.completions`, ...).
    * `paths`: the paths Tollgate serves it on; `upstream_path`: where it is sent, under the upstream's base URL.
    * `parse(raw) -> ParsedRequest`: validation (raises `InvalidRequest`).
    * `estimate_input(parsed) -> int`: input tokens to reserve before the upstream reports usage.
    * `read_usage(answer: dict) -> Usage | None`: the usage of a plain answer (raises `completions.usage.BadUsage`).
    * `stream`: the stream dialect (`completions.sse`), or None for an endpoint that never streams.
    * `output`: whether it generates output tokens (reserved against tokens/min and budgets).
    * `priced`: whether it costs money (moderations do not).
    * `log_field`: the body field logged with LOG_PROMPTS=true.
    * `schema`: the drf-spectacular decorator describing it in `/api/schema/`.
    """

    name: str
    paths: tuple[str, ...]
    upstream_path: str
    parse: Callable[[bytes], ParsedRequest]
    estimate_input: Callable[[ParsedRequest], int]
    read_usage: Callable[[dict], Usage | None]
    stream: Any = None
    output: bool = True
    priced: bool = True
    log_field: str = "input"
    schema: Callable | None = None

    def demand(self, parsed: ParsedRequest, input_tokens: int) -> Demand:
        """What `parsed` asks of its key's limits and budget."""
        return Demand(
            model=parsed.model,
            input_tokens=input_tokens,
            max_output_tokens=parsed.max_output_tokens,
            choices=parsed.choices,
            output=self.output,
            priced=self.priced,
        )
