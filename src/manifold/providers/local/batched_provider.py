"""What the batching engines of `provider: local` share (`engine: openvino`, `engine: llama_cpp_batched`): the
request path from an OpenAI body to sequences in batching.Engine and back to chat completions, chunks and legacy
completions. Each engine's provider says how a prompt is tokenized, how a sequence's sampling is configured, and
what it cannot do (`refused`, `check_chat`: a 400 naming the parameter).

Function calls are constrained as llama.cpp's ChatML function calling does them: the model first writes
`message:` or `functions.<name>:` (constrained to those, greedily), then the call's arguments (constrained to the
function's parameters).
"""

from __future__ import annotations

import abc
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from manifold.api.completions import new_completion_id, split_prompts
from manifold.config import LocalDeployment
from manifold.errors import (
    BadGatewayError,
    InvalidRequestError,
    ManifoldError,
    ServiceUnavailableError,
    UnsupportedError,
)
from manifold.providers.base import Call, Capability, ChunkStream
from manifold.providers.local import generation
from manifold.providers.local.batching import BatchSequence, Event, Outbox, clean_reason
from manifold.providers.local.completions import LEGACY_DEFAULT_MAX_TOKENS
from manifold.providers.local.model_thread import ModelThreadProvider
from manifold.providers.local.provider import _flatten_messages, embedded_model_path

DEFAULT_MAX_BATCH = 16
# llama.cpp's defaults (generation.py), so that every engine samples alike when a request leaves them out.
CHAT_DEFAULTS = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
COMPLETION_DEFAULTS = {**CHAT_DEFAULTS, "temperature": 0.8}


class Ask(NamedTuple):
    """What one sequence is asked for beside the request's own sampling options."""

    defaults: dict[str, float]  # for the sampling options the request leaves out
    repeat_penalty: float  # when the request sends none
    max_tokens: int
    schema: dict[str, Any] | None = None  # constrained to this JSON schema,
    choices: list[str] | None = None  # or to one of these texts
    top_logprobs: int | None = None  # not None: the chosen tokens' log-probabilities, and this many alternatives
    schema_param: str = "response_format"  # what a 400 about the schema names (`tools` for a function's)


MAX_TOOL_CALLS = 8  # in one answer


class _Answer:
    """One chat answer on its way: its first sequence, and what further tool calls need."""

    __slots__ = (
        "body",
        "calls",
        "functions",
        "max_tokens",
        "messages",
        "model",
        "more",
        "repeat",
        "seq",
        "tool",
        "written",
    )

    def __init__(
        self,
        model: Any,
        seq: BatchSequence,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        written: str,
        max_tokens: int,
        repeat: float,
    ) -> None:
        self.model = model
        self.seq = seq
        self.body = body
        self.messages = messages  # with the functions described, when there are tools
        self.written = written  # what the answer has written so far, after the chat template's generation prompt
        self.max_tokens = max_tokens  # for the whole answer, every call's arguments together
        self.repeat = repeat
        self.tool: str | None = None  # the function the first sequence writes the arguments of
        self.functions: dict[str, dict[str, Any]] = {}
        self.more = False  # whether further calls may follow
        self.calls = 1


class BatchingModelProvider(ModelThreadProvider[Any], abc.ABC):
    """A model run by a batching.Engine (`model.engine`); loads and tokenizes on the provider's thread."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAM, Capability.COMPLETIONS}
    )
    label = "local model"
    engine_name: ClassVar[str]
    # Several tool calls in one answer: the engine can end a constrained choice at once (choices include "").
    multiple_tool_calls: ClassVar[bool] = False
    # Legacy completions' `suffix` (given to `completion_prompt`); refused with a 400 where False.
    takes_suffix: ClassVar[bool] = False
    refused: ClassVar[tuple[str, ...]] = ("functions", "audio", "prediction", "web_search_options")

    kind = LocalDeployment
    deployment: LocalDeployment

    def packaged_model(self) -> Path:
        return embedded_model_path()

    def closer(self, model: Any) -> Callable[[], None]:
        return model.engine.close  # type: ignore[no-any-return]

    @property
    def max_batch(self) -> int:
        return self.deployment.max_batch or DEFAULT_MAX_BATCH

    @property
    def concurrency_limit(self) -> int | None:
        return self.deployment.max_concurrency or self.max_batch

    @property
    def context_window(self) -> int | None:
        return self.deployment.context_length

    # -- what an engine provides (prompts run on the provider's thread) ------------------------------------------

    def check_chat(self, body: dict[str, Any], name: str) -> None:
        """Refuse, with a 400 naming it, a chat option this engine cannot honour."""

    @abc.abstractmethod
    def chat_prompt(self, model: Any, messages: list[dict[str, Any]], suffix: str = "") -> tuple[Any, int]:
        """The messages through the model's chat template, then `suffix` (what the answer begins with), tokenized:
        (what the engine takes, its token count)."""

    @abc.abstractmethod
    def completion_prompt(self, model: Any, prompt: str | list[int], suffix: str | None = None) -> tuple[Any, int]:
        """A legacy prompt (text, or token ids), as the engine takes it (an empty one starts at BOS), with the
        request's `suffix` where the engine `takes_suffix`."""

    @abc.abstractmethod
    def config(self, model: Any, body: dict[str, Any], ask: Ask) -> Any:
        """One sequence's sampling as the engine takes it: the request's options in `body`, and `ask`."""

    @abc.abstractmethod
    def token_logprobs(self, model: Any, tokens: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        """OpenAI's `logprobs.content` entries of these (token, what the engine gave for it) pairs."""

    @abc.abstractmethod
    def vocab_size(self, model: Any) -> int: ...

    @abc.abstractmethod
    def decode(self, model: Any, tokens: list[int]) -> str: ...

    # -- chat --------------------------------------------------------------------------------------------------

    async def chat(self, call: Call) -> dict[str, Any]:
        answer = await self._chat_sequence(call)
        model, seq, tool = answer.model, answer.seq, answer.tool
        calls: list[dict[str, Any]] = []
        tokens: list[dict[str, Any]] = []
        generated = 0
        while True:
            texts: list[str] = []
            finish = "stop"
            async for kind, _, payload in self._events(model, [seq]):
                if kind == "text":
                    texts.append(payload)
                elif kind == "tokens":
                    tokens.extend(self.token_logprobs(model, payload))
                elif kind == "end":
                    finish, made = payload
                    generated += made
            if tool is None:
                break
            calls.append(_tool_call(tool, "".join(texts)))
            following = await self._next_call(answer, "".join(texts), finish, generated)
            if following is None:
                break
            tool, seq = following
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        logprobs = {"content": tokens, "refusal": None} if seq.pending is not None and not calls else None
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            finish = "tool_calls" if finish == "stop" else finish
        usage = generation.token_usage(answer.seq.prompt_tokens, generated)
        return generation.chat_completion(message, logprobs, finish, usage)

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        return self._chat_chunks(await self._chat_sequence(call))

    async def _chat_chunks(self, answer: _Answer) -> AsyncIterator[dict[str, Any]]:
        model, seq, tool = answer.model, answer.seq, answer.tool
        head = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": int(time.time()), "model": ""}
        first: dict[str, Any] = {"role": "assistant"}
        if tool is not None:
            first = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **_tool_call(tool, "")}]}
        yield {**head, "choices": [{"index": 0, "delta": first, "logprobs": None, "finish_reason": None}]}
        generated = 0
        index = 0  # of the tool call being written
        tokens: list[dict[str, Any]] = []
        while True:
            texts: list[str] = []
            finish = "stop"
            async for kind, _, payload in self._events(model, [seq]):
                if kind == "tokens":
                    tokens = self.token_logprobs(model, payload)
                elif kind == "text":
                    delta: dict[str, Any] = {"content": payload}
                    logprobs = None if seq.pending is None else {"content": tokens, "refusal": None}
                    if tool is not None:
                        texts.append(payload)
                        delta = {"tool_calls": [{"index": index, "function": {"arguments": payload}}]}
                        logprobs = None
                    chunk = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}
                    yield {**head, "choices": [chunk]}
                    tokens = []
                elif kind == "end":
                    finish, made = payload
                    generated += made
            following = None if tool is None else await self._next_call(answer, "".join(texts), finish, generated)
            if following is None:
                break
            tool, seq = following
            index += 1
            delta = {"tool_calls": [{"index": index, **_tool_call(tool, "")}]}
            yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
        finish = "tool_calls" if tool is not None and finish == "stop" else finish
        yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
        yield {"choices": [], "usage": generation.token_usage(answer.seq.prompt_tokens, generated)}

    async def _next_call(
        self, answer: _Answer, arguments: str, finish: str, generated: int
    ) -> tuple[str, BatchSequence] | None:
        """After a call's arguments: whether the model calls another function, and that call's sequence. As
        llama.cpp's ChatML function calling does it: the model writes, greedily and constrained, another
        `functions.<name>:` or nothing (the end of its answer). Not on an engine that cannot end a constrained
        choice (`multiple_tool_calls`), not with a named `tool_choice`, and not once `max_tokens` is spent."""
        if not answer.more or finish != "stop" or generated >= answer.max_tokens or answer.calls >= MAX_TOOL_CALLS:
            return None
        model, functions = answer.model, answer.functions
        answer.written += arguments + "\n"
        heads = [f"functions.{n}:" for n in functions]
        try:
            prompt, count = await self.on_thread(lambda: self.chat_prompt(model, answer.messages, answer.written))
            self._max_tokens(None, count, "messages")
        except InvalidRequestError:
            return None  # the context is full: the answer ends with the calls it has
        limit = 64  # the constraint ends the sequence itself, after "functions.<longest name>:" or at once
        config = self.config(model, {"temperature": 0}, Ask(CHAT_DEFAULTS, 1.0, limit, choices=[*heads, ""]))
        seq = BatchSequence(prompt, config, [], limit, 0, Outbox())
        head = "".join([str(payload) async for kind, _, payload in self._events(model, [seq]) if kind == "text"])
        tool = (
            functions.get(head.removeprefix("functions.").removesuffix(":")) if head.startswith("functions.") else None
        )
        if tool is None:
            return None
        answer.calls += 1
        answer.written += f"functions.{tool['name']}:\n"
        prompt, count = await self.on_thread(lambda: self.chat_prompt(model, answer.messages, answer.written))
        max_tokens = min(answer.max_tokens - generated, self._max_tokens(None, count, "messages"))
        schema = tool.get("parameters") or {"type": "object"}
        ask = Ask(CHAT_DEFAULTS, answer.repeat, max_tokens, schema, schema_param="tools")
        seq = BatchSequence(prompt, self.config(model, answer.body, ask), [], max_tokens, 0, Outbox())
        seq.schema_param = "tools"
        return str(tool["name"]), seq

    async def _chat_sequence(self, call: Call) -> _Answer:
        """The request's first sequence, and the function it must call (None: a plain answer)."""
        model = await self.model()
        body = call.body
        name = call.public_model
        for key in self.refused:
            if body.get(key):
                raise UnsupportedError(
                    f"The model '{name}' (local, engine {self.engine_name}) does not support '{key}'; "
                    "the llama_cpp engine does (docs/local-models.md#engines).",
                    param=key,
                )
        if (body.get("n") or 1) != 1:
            raise UnsupportedError(f"The model '{name}' (local) supports only n=1.", param="n")
        generation.check_sampling_extras(body)
        self.check_chat(body, name)
        messages = _flatten_messages(body["messages"])
        schema = _schema(body.get("response_format"))
        tools = _tools(body, name)
        tool: dict[str, Any] | None = None
        suffix = ""
        schema_param = "response_format"
        if tools:
            messages = _with_tools(messages, tools)
            tool = await self._choose_tool(model, body, messages, tools, name)
            if tool is None:
                suffix = "message:\n"
            else:
                suffix = f"functions.{tool['name']}:\n"
                schema = tool.get("parameters") or {"type": "object"}
                schema_param = "tools"
        prompt, count = await self.on_thread(lambda: self.chat_prompt(model, messages, suffix))
        max_tokens = self._max_tokens(body.get("max_completion_tokens") or body.get("max_tokens"), count, "messages")
        repeat = self.deployment.repeat_penalty or generation.LOCAL_DEFAULT_REPEAT_PENALTY
        wants = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0) if wants else None
        ask = Ask(CHAT_DEFAULTS, repeat, max_tokens, schema, top_logprobs=top, schema_param=schema_param)
        config = self.config(model, body, ask)
        seq = BatchSequence(prompt, config, _stops(body.get("stop")), max_tokens, 0, Outbox(), logprobs=wants)
        seq.prompt_tokens = count
        seq.schema_param = schema_param if schema is not None else None
        answer = _Answer(model, seq, body, messages, suffix, max_tokens, repeat)
        if tool is not None:
            answer.tool = str(tool["name"])
            answer.functions = {str(t["function"]["name"]): dict(t["function"]) for t in tools or ()}
            answer.more = self.multiple_tool_calls and not isinstance(body.get("tool_choice"), dict)
        return answer

    async def _choose_tool(
        self, model: Any, body: dict[str, Any], messages: list[dict[str, Any]], tools: list[Any], name: str
    ) -> dict[str, Any] | None:
        """The function to call (None: a message), as llama.cpp's ChatML function calling decides it: a named
        `tool_choice` is that function; otherwise the model writes, greedily and constrained, `message:` (not
        with `required`) or `functions.<name>:` — a short sequence batched like any other."""
        functions = {str(t["function"]["name"]): dict(t["function"]) for t in tools}
        choice = body.get("tool_choice") or "auto"
        if isinstance(choice, dict):
            wanted = str((choice.get("function") or {}).get("name"))
            if wanted not in functions:
                raise InvalidRequestError(
                    f"Invalid 'tool_choice': no function named '{wanted}' in 'tools'.", param="tool_choice"
                )
            return functions[wanted]
        if choice == "required" and len(functions) == 1:
            return next(iter(functions.values()))
        heads = [f"functions.{n}:" for n in functions]
        if choice != "required":
            heads.insert(0, "message:")
        prompt, count = await self.on_thread(lambda: self.chat_prompt(model, messages))
        self._max_tokens(None, count, "messages")
        limit = 64  # the constraint ends the sequence itself, after "functions.<longest name>:"
        config = self.config(model, {"temperature": 0}, Ask(CHAT_DEFAULTS, 1.0, limit, choices=heads))
        seq = BatchSequence(prompt, config, [], limit, 0, Outbox())
        head = "".join([str(payload) async for kind, _, payload in self._events(model, [seq]) if kind == "text"])
        picked = head.removeprefix("functions.").removesuffix(":")
        return functions.get(picked) if head.startswith("functions.") else None

    def _max_tokens(self, asked: int | None, prompt_tokens: int, param: str) -> int:
        n_ctx = self.deployment.context_length
        if prompt_tokens >= n_ctx:
            raise InvalidRequestError(
                f"This model's maximum context length is {n_ctx} tokens. However, your {param} resulted in "
                f"{prompt_tokens} tokens.",
                param=param,
                code="context_length_exceeded",
            )
        limit = asked or self.deployment.default_max_tokens or generation.LOCAL_DEFAULT_MAX_TOKENS
        return min(int(limit), n_ctx - prompt_tokens)

    async def count_chat_tokens(self, call: Call) -> int | None:
        model = await self.model()
        messages = _flatten_messages(call.body["messages"])
        return (await self.on_thread(lambda: self.chat_prompt(model, messages)))[1]

    # -- legacy completions ----------------------------------------------------------------------------------------

    async def completions(self, call: Call) -> dict[str, Any]:
        model, seqs, echoes = await self._completion_sequences(call)
        texts = {seq.index: [echoes[seq.index]] for seq in seqs}
        finishes: dict[int, str] = {}
        generated = 0
        async for kind, index, payload in self._events(model, seqs):
            if kind == "text":
                texts[index].append(payload)
            elif kind == "end":
                finishes[index] = payload[0]
                generated += payload[1]
        choices = [
            {"text": "".join(texts[i]), "index": i, "logprobs": None, "finish_reason": finishes.get(i, "stop")}
            for i in sorted(texts)
        ]
        return {
            "id": new_completion_id(),
            "object": "text_completion",
            "created": int(time.time()),
            "model": call.public_model,
            "choices": choices,
            "usage": generation.token_usage(_prompt_tokens(seqs), generated),
        }

    async def open_completions_stream(self, call: Call) -> ChunkStream:
        model, seqs, echoes = await self._completion_sequences(call)
        return self._completion_chunks(model, seqs, echoes)

    async def _completion_chunks(
        self, model: Any, seqs: list[BatchSequence], echoes: dict[int, str]
    ) -> AsyncIterator[dict[str, Any]]:
        for index, echoed in sorted(echoes.items()):
            if echoed:
                yield {"choices": [{"text": echoed, "index": index, "logprobs": None, "finish_reason": None}]}
        generated = 0
        async for kind, index, payload in self._events(model, seqs):
            if kind == "text":
                yield {"choices": [{"text": payload, "index": index, "logprobs": None, "finish_reason": None}]}
            elif kind == "end":
                generated += payload[1]
                yield {"choices": [{"text": "", "index": index, "logprobs": None, "finish_reason": payload[0]}]}
        yield {"choices": [], "usage": generation.token_usage(_prompt_tokens(seqs), generated)}

    async def _completion_sequences(self, call: Call) -> tuple[Any, list[BatchSequence], dict[int, str]]:
        model = await self.model()
        body = call.body
        name = call.public_model
        generation.check_sampling_extras(body)
        for key in ("logprobs", "logit_bias", *(() if self.takes_suffix else ("suffix",))):
            if body.get(key) is not None and body.get(key) != {}:
                raise UnsupportedError(
                    f"The model '{name}' (local, engine {self.engine_name}) does not support '{key}' in legacy "
                    "completions.",
                    param=key,
                )
        n = body.get("n") or 1
        best_of = body.get("best_of")
        if isinstance(best_of, int) and best_of > n:
            raise UnsupportedError(
                f"The model '{name}' (local) cannot rank candidates: 'best_of' must not exceed 'n'.", param="best_of"
            )
        if body.get("max_tokens") == 0:
            raise UnsupportedError(f"The model '{name}' (local) needs 'max_tokens' of at least 1.", param="max_tokens")
        prompts = split_prompts(body.get("prompt"))
        single = len(prompts) == 1 and body.get("prompt") == prompts[0]
        suffix = body.get("suffix")
        encoded = await self.on_thread(lambda: [self.completion_prompt(model, p, suffix) for p in prompts])
        vocab = self.vocab_size(model)
        seqs: list[BatchSequence] = []
        echoes: dict[int, str] = {}
        outbox = Outbox()
        for i, (prompt, (tensor, count)) in enumerate(zip(prompts, encoded, strict=True)):
            param = "prompt" if single else f"prompt[{i}]"
            bad = [t for t in prompt if not 0 <= t < vocab] if isinstance(prompt, list) else []
            if bad:
                raise InvalidRequestError(
                    f"Invalid '{param}': token id {bad[0]} is outside the vocabulary of '{name}' (0 to {vocab - 1}).",
                    param=param,
                    code="invalid_value",
                )
            asked = body.get("max_tokens")
            max_tokens = self._max_tokens(asked if asked is not None else LEGACY_DEFAULT_MAX_TOKENS, count, param)
            echoed = ""
            if body.get("echo"):
                echoed = prompt if isinstance(prompt, str) else self.decode(model, prompt)
            for j in range(n):
                config = self.config(model, body, Ask(COMPLETION_DEFAULTS, 1.0, max_tokens))
                seq = BatchSequence(tensor, config, _stops(body.get("stop")), max_tokens, i * n + j, outbox)
                seq.prompt_tokens = count if j == 0 else 0
                seqs.append(seq)
                echoes[i * n + j] = echoed
        return model, seqs, echoes

    # -- the engine ------------------------------------------------------------------------------------------------

    async def _events(self, model: Any, seqs: list[BatchSequence]) -> AsyncIterator[Event]:
        """The sequences' events until each has ended; a consumer that stops early (a client that left) cancels
        those still running, which frees their slots before the engine's next step."""
        queue = seqs[0].outbox.queue
        try:
            model.engine.submit(seqs)
        except RuntimeError as exc:
            raise ServiceUnavailableError(f"The local model is unavailable: {exc}") from None
        left = len(seqs)
        try:
            while left:
                event = await queue.get()
                if event[0] == "error":
                    if isinstance(event[2], ManifoldError):
                        raise event[2]
                    raise BadGatewayError(f"The local model failed: {clean_reason(event[2])}")
                if event[0] == "end":
                    left -= 1
                yield event
        finally:
            if left:
                model.engine.cancel(seqs)


def _tools(body: dict[str, Any], model: str) -> list[Any] | None:
    """The request's function tools (None without, or with `tool_choice: none`)."""
    tools = body.get("tools") or None
    if tools is None or body.get("tool_choice") == "none":
        return None
    if any(t.get("type") != "function" for t in tools):
        raise UnsupportedError(f"The model '{model}' (local) supports function tools only.", param="tools")
    return list(tools)


# llama-cpp-python's ChatML function-calling prompt (llama_chat_format.chatml_function_calling), which the
# llama_cpp engine uses: both engines present tools to the model alike.
_TOOLS_NOTE = (
    "\n\nYou have access to the following functions:\n{listing}"
    "\n\nYou can respond to users messages with either a single message or one or more function calls."
    "\n\nTo respond with a message begin the message with 'message:', use the following format:"
    "\n\nmessage:\n<message>"
    "\n\nTo respond with one or more function calls begin the message with 'functions.<function_name>:', use the "
    "following format:"
    '\n\nfunctions.<function_name>:\n{{ "arg1": "value1", "arg2": "value2" }}'
)


def _with_tools(messages: list[dict[str, Any]], tools: list[Any]) -> list[dict[str, Any]]:
    """The messages with the functions described in the system message, and earlier calls written as the model
    writes them."""
    listing = "".join(
        f"\nfunctions.{t['function']['name']}:\n{json.dumps(t['function'].get('parameters') or {})}\n" for t in tools
    )
    note = _TOOLS_NOTE.format(listing=listing)
    out: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            written = "".join(f"functions.{c['function']['name']}:\n{c['function']['arguments']}\n" for c in calls)
            message = {"role": "assistant", "content": written}
        out.append({"role": message["role"], "content": message["content"]})
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": out[0]["content"] + note}
    else:
        out.insert(0, {"role": "system", "content": note.lstrip()})
    return out


def _tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _prompt_tokens(seqs: list[BatchSequence]) -> int:
    return sum(seq.prompt_tokens for seq in seqs)


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _schema(fmt: Any) -> dict[str, Any] | None:
    """The JSON schema that constrains the output (`json_object`: any object)."""
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) and schema else {"type": "object"}
    return None


def sampling_option(body: dict[str, Any], key: str, defaults: dict[str, float]) -> float:
    """The request's value of a sampling option, else the engine's default."""
    value = body.get(key)
    return float(defaults[key] if value is None else value)
