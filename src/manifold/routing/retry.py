"""What a failed attempt means for the next one, and how long to wait before it.

=================  ===============================================  ==========================================
verdict            errors                                           what the router does
=================  ===============================================  ==========================================
RETRY              408, 409, 429, any 5xx (529 too), timeouts,      counts against the deployment's breaker;
                   refused / reset connections, malformed replies   tries again (another deployment first)
SWITCH             401, 403 from an upstream                        opens the deployment's breaker at once;
                                                                    tries another deployment, no backoff
CONTEXT_WINDOW     the prompt does not fit the model's context      no retry: the context-window fallbacks
FATAL              anything else (400, 404, 413, 422, …)            the client's answer, as it is
=================  ===============================================  ==========================================
"""

from __future__ import annotations

import enum
import random
import re

from manifold.errors import ManifoldError

__all__ = ["Verdict", "backoff_delay", "classify", "is_context_window_error"]


class Verdict(enum.Enum):
    RETRY = "retry"
    SWITCH = "switch"
    CONTEXT_WINDOW = "context_window"
    FATAL = "fatal"


_RETRY_STATUSES = frozenset({408, 409, 429})  # and 5xx: what the official SDKs retry
# What upstreams say when a prompt does not fit: OpenAI and Azure (code), vLLM, llama.cpp server, Anthropic,
# Mistral, Gemini, Ollama, TGI.
_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded", "exceed_context_size_error"})
_CONTEXT_MESSAGE = re.compile(
    r"maximum context length|context[ _-]?length[ _-]?exceeded|context window|exceeds? the (?:available )?context"
    r"|prompt is too long|input is too long for|too large for model with|input token count .*exceeds"
    r"|exceeds the maximum number of tokens|input validation error: `inputs` tokens \+ `max_new_tokens`",
    re.IGNORECASE,
)


def is_context_window_error(error: ManifoldError) -> bool:
    if error.status_code not in (400, 413, 422):
        return False
    return error.code in _CONTEXT_CODES or bool(_CONTEXT_MESSAGE.search(error.message))


def classify(error: ManifoldError) -> Verdict:
    status = error.status_code
    if status >= 500 or status in _RETRY_STATUSES:
        return Verdict.RETRY
    if status in (401, 403) and error.upstream_status is not None:
        return Verdict.SWITCH
    if is_context_window_error(error):
        return Verdict.CONTEXT_WINDOW
    return Verdict.FATAL


def backoff_delay(retry: int, initial: float, maximum: float, rand: float | None = None) -> float:
    """Exponential backoff with jitter for the `retry`-th retry (1, 2, …) on the same deployment: a uniform
    draw from the upper half of `initial * 2**(retry-1)`, capped at `maximum`."""
    if initial <= 0:
        return 0.0
    base = min(maximum, initial * float(2 ** min(retry - 1, 30)))
    r = random.random() if rand is None else rand
    return base * (0.5 + 0.5 * r)
