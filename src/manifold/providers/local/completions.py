"""Legacy completions on the in-process llama.cpp model: `Llama.create_completion`, once per prompt and choice
(`index = prompt * n + i`, OpenAI's order), run on the provider's one thread.

What llama.cpp cannot do is refused with a 400 naming the parameter: `logprobs` (it needs the model loaded with
`logits_all`, which costs n_ctx * n_vocab floats), `best_of` above `n` (no ranking without logprobs), and
`max_tokens: 0` (llama.cpp reads it as "no limit"). A missing `max_tokens` is 16, the legacy default.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from manifold.api.completions import new_completion_id, split_prompts
from manifold.errors import BadGatewayError, InvalidRequestError, ManifoldError, UnsupportedError
from manifold.providers.base import Call
from manifold.providers.local import generation

LEGACY_DEFAULT_MAX_TOKENS = 16
# Options llama.cpp's create_completion takes under OpenAI's name, or as a common backend extra.
_PASSED = ("echo", "suffix", *generation.SAMPLING_OPTIONS)


class Plan(NamedTuple):
    prompts: list[str | list[int]]
    n: int
    kwargs: dict[str, Any]
    public_model: str


def plan(call: Call, llama: Any, processors: Any) -> Plan:
    """Check the request against what the local model can do and build create_completion's arguments."""
    body = call.body
    model = call.public_model
    generation.check_sampling_extras(body)
    if body.get("logprobs") is not None:
        raise UnsupportedError(
            f"The model '{model}' (local) does not return logprobs for legacy completions.", param="logprobs"
        )
    n = body.get("n") or 1
    best_of = body.get("best_of")
    if isinstance(best_of, int) and best_of > n:
        raise UnsupportedError(
            f"The model '{model}' (local) cannot rank candidates: 'best_of' must not exceed 'n'.", param="best_of"
        )
    max_tokens = body.get("max_tokens")
    if max_tokens == 0:
        raise UnsupportedError(f"The model '{model}' (local) needs 'max_tokens' of at least 1.", param="max_tokens")
    prompts = split_prompts(body.get("prompt"))
    single_token_prompt = len(prompts) == 1 and isinstance(prompts[0], list) and body.get("prompt") == prompts[0]
    vocab = int(llama.n_vocab())
    for i, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < vocab] if isinstance(prompt, list) else []
        if bad:
            param = "prompt" if single_token_prompt else f"prompt[{i}]"
            raise InvalidRequestError(
                f"Invalid '{param}': token id {bad[0]} is outside the vocabulary of '{model}' (0 to {vocab - 1}).",
                param=param,
                code="invalid_value",
            )
    kw: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
    kw["max_tokens"] = max_tokens if max_tokens is not None else LEGACY_DEFAULT_MAX_TOKENS
    stop = body.get("stop")
    if stop is not None:
        kw["stop"] = [stop] if isinstance(stop, str) else stop
    if body.get("logit_bias"):
        kw["logit_bias"] = {int(k): float(v) for k, v in body["logit_bias"].items()}
    kw["logits_processor"] = processors
    return Plan(prompts, n, kw, model)


def _prompt_tokens(llama: Any, prompt: str | list[int]) -> int:
    if isinstance(prompt, list):
        return len(prompt)
    return len(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))


def run(llama: Any, p: Plan, cancelled: threading.Event) -> dict[str, Any]:
    """The whole `text_completion` (on the model's thread)."""
    choices: list[dict[str, Any]] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for i, prompt in enumerate(p.prompts):
        for j in range(p.n):
            if cancelled.is_set():
                raise BadGatewayError("cancelled")
            result = _call(llama, p, prompt)
            choice = dict(result["choices"][0])
            choice["index"] = i * p.n + j
            choice["text"] = _echoed(llama, p, prompt) + choice["text"]
            choices.append(choice)
            got = result.get("usage") or {}
            if j == 0:
                usage["prompt_tokens"] += int(got.get("prompt_tokens", 0))
            usage["completion_tokens"] += int(got.get("completion_tokens", 0))
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": new_completion_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": p.public_model,
        "choices": choices,
        "usage": usage,
    }


def run_stream(
    llama: Any, p: Plan, cancelled: threading.Event, generated: Callable[[], int]
) -> Iterator[dict[str, Any]]:
    """`text_completion` chunks, then one `choices: []` chunk with the usage (on the model's thread)."""
    prompt_tokens = 0
    start = generated()
    for i, prompt in enumerate(p.prompts):
        prompt_tokens += _prompt_tokens(llama, prompt)
        for j in range(p.n):
            echoed = _echoed(llama, p, prompt)
            if echoed:
                yield {"choices": [{"text": echoed, "index": i * p.n + j, "logprobs": None, "finish_reason": None}]}
            for chunk in _call(llama, p, prompt, stream=True):
                for choice in chunk.get("choices") or []:
                    choice["index"] = i * p.n + j
                yield chunk
                if cancelled.is_set():
                    return
    yield {"choices": [], "usage": generation.token_usage(prompt_tokens, generated() - start)}


def _echoed(llama: Any, p: Plan, prompt: str | list[int]) -> str:
    """The text llama.cpp cannot echo itself: a token prompt (its own echo concatenates list + str)."""
    if not isinstance(prompt, list) or not p.kwargs.get("echo"):
        return ""
    return bytes(llama.detokenize(prompt)).decode("utf-8", "replace")


def _call(llama: Any, p: Plan, prompt: str | list[int], stream: bool = False) -> Any:
    kwargs = p.kwargs
    if isinstance(prompt, list) and kwargs.get("echo"):
        kwargs = {**kwargs, "echo": False}
    try:
        own = generation.completion_plan(llama, prompt, kwargs)
        if own is None:
            return llama.create_completion(prompt=prompt, stream=stream, **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise as_error(exc) from None
    # Manifold's own token loop (generation.py): llama.cpp's could stall on bytes that never form a character.
    run = generation.Generation(
        llama, own, generation.with_logit_bias(kwargs["logits_processor"], kwargs.get("logit_bias"))
    )
    return _text_chunks(run) if stream else _text_completion(run)


def _text_chunks(run: generation.Generation) -> Iterator[dict[str, Any]]:
    for text, finish in run:
        if text or finish is not None:
            yield {"choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}


def _text_completion(run: generation.Generation) -> dict[str, Any]:
    text, finish = run.whole()
    return {
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": generation.token_usage(len(run.plan.prompt), run.generated),
    }


def as_error(exc: BaseException) -> ManifoldError:
    if isinstance(exc, ManifoldError):
        return exc
    text = str(exc)
    if "context window" in text:
        return InvalidRequestError(
            f"This model's maximum context length was exceeded: {text}.", param="prompt", code="context_length_exceeded"
        )
    return BadGatewayError(f"The local model failed: {text}")
