"""Per-key limits (placeholder until the rate-limit issue lands): admits every request."""

from dataclasses import dataclass, field

from .tokens import estimate_prompt_tokens

COMPLETION_THROTTLES: list = []


@dataclass
class Admission:
    prompt_estimate: int
    headers: dict = field(default_factory=dict)

    async def settle(self, outcome) -> None:
        return None


async def admit(*, request, view, key, chat, outcome) -> Admission:
    return Admission(prompt_estimate=estimate_prompt_tokens(chat.data["messages"]))
