"""Chat generation on the in-process llama.cpp model, token by token, with Manifold's own detokenization.

llama-cpp-python's `create_completion` turns tokens into text in a way that can stall for good: bytes that never
form a UTF-8 character (a token holding the first bytes of an emoji, followed by one that does not complete it)
are held back forever, and its "incomplete character" check skips the `max_tokens` test as well, so the model
runs to the end of its context window while no text comes out (issue 17: a Responses stream stopped sending
deltas, then spun at 100% CPU). Here an incremental UTF-8 decoder waits for a character's last byte and turns
bytes that can never form one into U+FFFD at once, and `max_tokens` is tested after every token.
"""

from __future__ import annotations

import codecs
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, cast

from manifold.errors import InvalidRequestError
from manifold.providers.local import gbnf

# A 135M-parameter model drifts into repeating itself; these bound a newcomer's first stream (docs/backends.md).
LOCAL_DEFAULT_MAX_TOKENS = 512
LOCAL_DEFAULT_REPEAT_PENALTY = 1.1
# llama.cpp's own defaults for the sampling options a request leaves out (create_chat_completion's).
_SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repeat_penalty": 1.0,
    "mirostat_mode": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
}


# The sampling options llama.cpp takes under the same name as OpenAI or as a common backend extra (chat and
# legacy completions alike).
SAMPLING_OPTIONS = ("seed", *_SAMPLING_DEFAULTS)

# The extras beyond OpenAI's request schema (which types and bounds the rest): (integer?, lowest, highest).
_EXTRAS: dict[str, tuple[bool, float, float]] = {
    "top_k": (True, 0, math.inf),
    "min_p": (False, 0, 1),
    "typical_p": (False, 0, 1),
    "repeat_penalty": (False, 0, math.inf),
    "mirostat_mode": (True, 0, 2),
    "mirostat_tau": (False, 0, math.inf),
    "mirostat_eta": (False, 0, math.inf),
}


def check_sampling_extras(body: dict[str, Any]) -> None:
    """A 400 naming the option for a llama.cpp sampling extra of the wrong type or out of range (every local
    engine reads them; without this check a string reached `float()` and became a 500)."""
    for key, (integer, low, high) in _EXTRAS.items():
        value = body.get(key)
        if value is None:
            continue
        number = type(value) is int or (type(value) is float and not integer and math.isfinite(value))
        if not number or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            bounds = f"from {low:g}" + ("" if high == math.inf else f" to {high:g}")
            raise InvalidRequestError(
                f"Invalid '{key}': expected {kind} {bounds}, got {json.dumps(value)[:40]}.",
                param=key,
                code="invalid_value",
            )


# create_completion's defaults, for legacy completions.
_COMPLETION_DEFAULTS = {**_SAMPLING_DEFAULTS, "temperature": 0.8}


class Utf8Text:
    """Token bytes in, text out: a character split across tokens waits for its last byte; bytes that can never
    complete a character become U+FFFD as soon as that is certain."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return str(self._decoder.decode(data, final=False))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", final=True))


class StopText:
    """Text in, text out, cut at the first stop sequence; the tail that could still begin one is held back."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop sequence ended the output)."""
        buf = self._held + text
        found = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if found:
            self._held = ""
            return buf[: min(found)], True
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:n]):
                    hold = n
                    break
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


class Plan(NamedTuple):
    prompt: list[int]
    sampling: dict[str, Any]
    stop: list[str]
    max_tokens: int
    grammar: Any
    seed: int | None


def plan(llama: Any, kw: dict[str, Any]) -> Plan | None:
    """The prompt and options for `kw` (create_chat_completion's arguments), or None where llama.cpp's own
    path is needed: tools (its function-calling grammar), logprobs, or a GGUF without a chat template."""
    template = llama.metadata.get("tokenizer.chat_template")
    if "tools" in kw or kw.get("logprobs") or kw.get("top_logprobs") is not None or not template:
        return None
    from llama_cpp import llama_grammar

    prompt, result = chat_prompt(llama, template, kw["messages"])
    stop = list(kw.get("stop") or [])
    if result.stop is not None:
        stop += [result.stop] if isinstance(result.stop, str) else list(result.stop)
    grammar = None
    fmt = kw.get("response_format")
    if fmt is not None:
        schema = fmt.get("schema")
        grammar = (
            llama_grammar.LlamaGrammar.from_string(gbnf.schema_gbnf(schema), verbose=False)
            if schema
            else llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
        )
    return _plan(llama, prompt, kw, stop, grammar, _SAMPLING_DEFAULTS)


def chat_prompt(llama: Any, template: str, messages: list[dict[str, Any]]) -> tuple[list[int], Any]:
    """`messages` through the model's chat template (as `create_chat_completion` formats them), tokenized by its
    own tokenizer; with the formatter's result (its `stop`)."""
    from llama_cpp import llama_chat_format

    eos, bos = llama.token_eos(), llama.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    result = formatter(messages=cast(Any, messages))
    prompt = llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
    return list(prompt), result


def chat_completion(
    message: dict[str, Any], logprobs: dict[str, Any] | None, finish: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A `chat.completion` of one choice, as every local engine answers (the router sets its id and model)."""
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "",
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
        "usage": usage,
    }


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """An OpenAI `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_plan(llama: Any, prompt: str | list[int], kw: dict[str, Any]) -> Plan | None:
    """A legacy completion's prompt and options (`kw`: create_completion's arguments), or None where llama.cpp's
    own path is needed (`suffix`, `echo`)."""
    if kw.get("suffix") is not None or kw.get("echo"):
        return None
    tokens = prompt if isinstance(prompt, list) else llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if not tokens:
        return None  # llama.cpp starts an empty prompt from its BOS token
    return _plan(llama, list(tokens), kw, list(kw.get("stop") or []), None, _COMPLETION_DEFAULTS)


def _plan(
    llama: Any, prompt: list[int], kw: dict[str, Any], stop: list[str], grammar: Any, defaults: dict[str, Any]
) -> Plan:
    n_ctx = int(llama.n_ctx())
    if len(prompt) >= n_ctx:
        raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")
    sampling = {k: kw.get(k, v) for k, v in defaults.items()}
    sampling["temp"] = sampling.pop("temperature")
    max_tokens = min(int(kw["max_tokens"]), n_ctx - len(prompt))
    return Plan(prompt, sampling, stop, max_tokens, grammar, kw.get("seed"))


def with_logit_bias(processors: Any, bias: dict[int, float] | None) -> Any:
    """`processors` (a llama.cpp LogitsProcessorList) with OpenAI's `logit_bias` added to the scores first."""
    if not bias:
        return processors

    def apply(input_ids: Any, scores: Any) -> Any:
        for token, value in bias.items():
            scores[token] += value
        return scores

    return type(processors)([apply, *processors])


class Generation:
    """Iterates (text, None) pieces as they become certain, then ("", finish_reason), on the model's thread;
    `generated` counts the completion tokens (the end-of-sequence token excluded, as OpenAI counts)."""

    def __init__(self, llama: Any, p: Plan, processors: Any, is_end: Callable[[int], bool] | None = None) -> None:
        self.llama, self.plan, self.processors = llama, p, processors
        self.is_end = is_end if is_end is not None else _end_of_generation(llama)
        self.generated = 0

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return _texts(self)

    def whole(self) -> tuple[str, str]:
        """All the text and the finish reason (the last piece always has one), for an answer not streamed."""
        texts: list[str] = []
        finish = "stop"
        for text, ended in self:
            texts.append(text)
            finish = ended or finish
        return "".join(texts), finish


def _end_of_generation(llama: Any) -> Callable[[int], bool]:
    from llama_cpp import llama_cpp as lib

    vocab = llama._model.vocab
    return lambda token: bool(lib.llama_vocab_is_eog(vocab, token))


def _texts(g: Generation) -> Iterator[tuple[str, str | None]]:
    llama, p = g.llama, g.plan
    # Without a seed, as llama.cpp's own create_completion draws one (from the previous seed).
    llama.set_seed(p.seed if p.seed is not None else random.Random(llama._seed).randint(0, 2**32))
    decoder, stops = Utf8Text(), StopText(p.stop)
    finish = "length"
    for token in llama.generate(p.prompt, logits_processor=g.processors, grammar=p.grammar, **p.sampling):
        if g.is_end(token):
            finish = "stop"
            break
        g.generated += 1
        text, stopped = stops.feed(decoder.feed(llama.detokenize([token])))
        if text:
            yield text, None
        if stopped:
            yield "", "stop"
            return
        if g.generated >= p.max_tokens:
            break
    tail, stopped = stops.feed(decoder.flush())
    tail += "" if stopped else stops.flush()
    if tail:
        yield tail, None
    yield "", "stop" if stopped else finish
