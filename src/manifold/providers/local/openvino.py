"""`provider: local` with `engine: openvino`: a GGUF (or OpenVINO IR folder) run by OpenVINO GenAI's
`ContinuousBatchingPipeline` in the gateway's process, many requests at once (batching.py), with prefix caching.

What the pipeline cannot do here is refused with a 400 naming the parameter (docs/local-models.md#engines):
`top_logprobs` above 0 (it reports the sampled token's log-probability only), `logit_bias`, `n` above 1 in chat,
and legacy completions' `suffix` and `logprobs`.
`response_format` (`json_object`, `json_schema`) is grammar-constrained by the pipeline's structured output, and so
are function calls: the model first writes `message:` or `functions.<name>:` (constrained to those), then the
call's arguments (constrained to the function's parameters), as llama.cpp's ChatML function calling does.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from manifold.api.completions import new_completion_id, split_prompts
from manifold.config import DeploymentBase, LocalDeployment
from manifold.errors import BadGatewayError, InvalidRequestError, ServiceUnavailableError, UnsupportedError
from manifold.providers.base import Call, Capability, ChunkStream, of_kind
from manifold.providers.local import generation
from manifold.providers.local.batching import BatchSequence, Detokenizer, Engine, Event, Outbox, WindowDetokenizer
from manifold.providers.local.completions import LEGACY_DEFAULT_MAX_TOKENS
from manifold.providers.local.json_grammar import schema_grammar
from manifold.providers.local.model_thread import ModelThreadProvider
from manifold.providers.local.provider import _flatten_messages, embedded_model_path

DEFAULT_MAX_BATCH = 16
DEFAULT_KV_CACHE_GB = 1
# llama.cpp's defaults (generation.py), so that both engines sample alike when a request leaves them out.
_CHAT_DEFAULTS = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
_COMPLETION_DEFAULTS = {**_CHAT_DEFAULTS, "temperature": 0.8}
_REFUSED = ("functions", "logit_bias", "audio", "prediction", "web_search_options")
_NEUTRAL = {"typical_p": 1.0, "mirostat_mode": 0}  # llama.cpp-only options, accepted at their no-op value


class Model(NamedTuple):
    pipeline: Any
    tokenizer: Any
    engine: Engine
    eos: int
    stop_ids: frozenset[int]
    token_bytes: dict[int, bytes]  # for `logprobs`


class OpenVinoModelProvider(ModelThreadProvider[Model]):
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAM, Capability.COMPLETIONS}
    )
    # Loads and tokenizes; the pipeline's steps run on the engine's own thread.
    thread_name = "manifold-openvino"
    label = "local model"

    kind = LocalDeployment
    deployment: LocalDeployment

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, cls.kind)
        path = deployment.model_path
        if path and not (Path(path).is_file() or (Path(path) / "openvino_model.xml").is_file()):
            return [f"model_path: {path!r} is neither a GGUF file nor an OpenVINO IR folder (with openvino_model.xml)"]
        return []

    def packaged_model(self) -> Path:
        return embedded_model_path()

    def prepare(self, path: Path) -> None:
        try:
            import openvino_genai  # noqa: F401
        except ImportError:
            raise ServiceUnavailableError(
                "The local provider's openvino engine needs OpenVINO GenAI: pip install 'manifold[openvino]'."
            ) from None

    def load(self, path: Path) -> Model:
        import openvino_genai as ov

        dep = self.deployment
        scheduler = ov.SchedulerConfig()
        scheduler.enable_prefix_caching = dep.prefix_caching
        scheduler.cache_size = dep.kv_cache_gb or DEFAULT_KV_CACHE_GB
        scheduler.max_num_seqs = self.max_batch
        properties = {"INFERENCE_NUM_THREADS": dep.threads} if dep.threads else {}
        pipeline = ov.ContinuousBatchingPipeline(str(path), scheduler, "CPU", properties)
        tokenizer = pipeline.get_tokenizer()
        base = pipeline.get_config()
        eos = int(base.eos_token_id)
        stop_ids = frozenset({eos, *(int(t) for t in base.stop_token_ids)} - {-1})
        token_bytes = {int(i): bytes(b) for b, i in tokenizer.get_vocab().items()}
        pieces = _pieces(tokenizer, token_bytes)
        detokenizer = partial(WindowDetokenizer, tokenizer.decode) if pieces is None else partial(Detokenizer, pieces)
        engine = Engine(pipeline, detokenizer, stop_ids, self.max_batch, f"{self.thread_name}-engine")
        return Model(pipeline, tokenizer, engine, eos, stop_ids, token_bytes)

    def closer(self, model: Model) -> Callable[[], None]:
        return model.engine.close

    @property
    def max_batch(self) -> int:
        return self.deployment.max_batch or DEFAULT_MAX_BATCH

    @property
    def concurrency_limit(self) -> int | None:
        return self.deployment.max_concurrency or self.max_batch

    @property
    def context_window(self) -> int | None:
        return self.deployment.context_length

    # -- chat --------------------------------------------------------------------------------------------------

    async def chat(self, call: Call) -> dict[str, Any]:
        model, seq, tool = await self._chat_sequence(call)
        texts: list[str] = []
        tokens: list[dict[str, Any]] = []
        finish, generated = "stop", 0
        async for kind, _, payload in self._events(model, [seq]):
            if kind == "text":
                texts.append(payload)
            elif kind == "tokens":
                tokens.extend(_logprobs(model, payload))
            elif kind == "end":
                finish, generated = payload
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        logprobs = {"content": tokens, "refusal": None} if seq.pending is not None and tool is None else None
        if tool is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [_tool_call(tool, message["content"])]}
            finish = "tool_calls" if finish == "stop" else finish
        return {
            "id": "chatcmpl-local",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": generation.token_usage(seq.prompt_tokens, generated),
        }

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        model, seq, tool = await self._chat_sequence(call)
        return self._chat_chunks(model, seq, tool)

    async def _chat_chunks(self, model: Model, seq: BatchSequence, tool: str | None) -> AsyncIterator[dict[str, Any]]:
        head = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": int(time.time()), "model": ""}
        first: dict[str, Any] = {"role": "assistant"}
        if tool is not None:
            first = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **_tool_call(tool, "")}]}
        yield {**head, "choices": [{"index": 0, "delta": first, "logprobs": None, "finish_reason": None}]}
        generated = 0
        tokens: list[dict[str, Any]] = []
        async for kind, _, payload in self._events(model, [seq]):
            if kind == "tokens":
                tokens = _logprobs(model, payload)
            elif kind == "text":
                delta: dict[str, Any] = {"content": payload}
                logprobs = None if seq.pending is None else {"content": tokens, "refusal": None}
                if tool is not None:
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": payload}}]}
                    logprobs = None
                yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}]}
                tokens = []
            elif kind == "end":
                finish, generated = payload
                finish = "tool_calls" if tool is not None and finish == "stop" else finish
                yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
        yield {"choices": [], "usage": generation.token_usage(seq.prompt_tokens, generated)}

    async def _chat_sequence(self, call: Call) -> tuple[Model, BatchSequence, str | None]:
        """The request's sequence, and the function it must call (None: a plain answer)."""
        model = await self.model()
        body = call.body
        name = call.public_model
        for key in _REFUSED:
            if body.get(key):
                raise UnsupportedError(
                    f"The model '{name}' (local, engine openvino) does not support '{key}'; "
                    "the llama_cpp engine does (docs/local-models.md#engines).",
                    param=key,
                )
        if (body.get("n") or 1) != 1:
            raise UnsupportedError(f"The model '{name}' (local) supports only n=1.", param="n")
        if body.get("top_logprobs"):
            raise UnsupportedError(
                f"The model '{name}' (local, engine openvino) reports the chosen token's logprob only: "
                "'top_logprobs' must be 0; the llama_cpp engine has them (docs/local-models.md#engines).",
                param="top_logprobs",
            )
        messages = _flatten_messages(body["messages"])
        schema = _schema(body.get("response_format"))
        tools = _tools(body, name)
        tool: dict[str, Any] | None = None
        suffix = ""
        if tools:
            messages = _with_tools(messages, tools)
            tool = await self._choose_tool(model, body, messages, tools, name)
            if tool is None:
                suffix = "message:\n"
            else:
                suffix = f"functions.{tool['name']}:\n"
                schema = tool.get("parameters") or {"type": "object"}
        prompt, count = await self.on_thread(lambda: _chat_prompt(model, messages, suffix))
        max_tokens = self._max_tokens(body.get("max_completion_tokens") or body.get("max_tokens"), count, "messages")
        repeat = self.deployment.repeat_penalty or generation.LOCAL_DEFAULT_REPEAT_PENALTY
        config = _config(model, body, _CHAT_DEFAULTS, repeat, max_tokens, schema)
        wants = bool(body.get("logprobs"))
        if wants:
            config.logprobs = 1
        seq = BatchSequence(prompt, config, _stops(body.get("stop")), max_tokens, 0, Outbox(), logprobs=wants)
        seq.prompt_tokens = count
        return model, seq, None if tool is None else str(tool["name"])

    async def _choose_tool(
        self, model: Model, body: dict[str, Any], messages: list[dict[str, Any]], tools: list[Any], name: str
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
        options = "|".join(re.escape(f"functions.{n}:") for n in functions)
        pattern = options if choice == "required" else f"message:|{options}"
        prompt, count = await self.on_thread(lambda: _chat_prompt(model, messages))
        self._max_tokens(None, count, "messages")
        limit = 64  # the regex ends the sequence itself, after "functions.<longest name>:"
        config = _config(model, {"temperature": 0}, _CHAT_DEFAULTS, 1.0, limit, None, regex=pattern)
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
        return (await self.on_thread(lambda: _chat_prompt(model, messages)))[1]

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
        self, model: Model, seqs: list[BatchSequence], echoes: dict[int, str]
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

    async def _completion_sequences(self, call: Call) -> tuple[Model, list[BatchSequence], dict[int, str]]:
        model = await self.model()
        body = call.body
        name = call.public_model
        for key in ("logprobs", "suffix", "logit_bias"):
            if body.get(key) is not None and body.get(key) != {}:
                raise UnsupportedError(
                    f"The model '{name}' (local, engine openvino) does not support '{key}' in legacy completions.",
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
        encoded = await self.on_thread(lambda: [_completion_prompt(model, p) for p in prompts])
        vocab = _vocab_size(model)
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
                echoed = prompt if isinstance(prompt, str) else model.tokenizer.decode(prompt)
            for j in range(n):
                config = _config(model, body, _COMPLETION_DEFAULTS, 1.0, max_tokens, None)
                seq = BatchSequence(tensor, config, _stops(body.get("stop")), max_tokens, i * n + j, outbox)
                seq.prompt_tokens = count if j == 0 else 0
                seqs.append(seq)
                echoes[i * n + j] = echoed
        return model, seqs, echoes

    # -- the engine ------------------------------------------------------------------------------------------------

    async def _events(self, model: Model, seqs: list[BatchSequence]) -> AsyncIterator[Event]:
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
                    raise BadGatewayError(f"The local model failed: {event[2]}")
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


def _chat_prompt(model: Model, messages: list[dict[str, Any]], suffix: str = "") -> tuple[Any, int]:
    """The messages through the model's chat template, then `suffix` (what the answer begins with), tokenized (on
    the provider's thread)."""
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True) + suffix
    ids = model.tokenizer.encode(text, add_special_tokens=False).input_ids
    return ids, int(ids.shape[1])


def _completion_prompt(model: Model, prompt: str | list[int]) -> tuple[Any, int]:
    import numpy as np
    import openvino as ov

    if isinstance(prompt, str):
        ids = model.tokenizer.encode(prompt, add_special_tokens=True).input_ids
        if int(ids.shape[1]) > 0:
            return ids, int(ids.shape[1])
        prompt = []
    tokens = prompt or [int(model.tokenizer.get_bos_token_id())]  # as llama.cpp: an empty prompt starts at BOS
    return ov.Tensor(np.array([tokens], dtype=np.int64)), len(tokens)


def _pieces(tokenizer: Any, token_bytes: dict[int, bytes]) -> list[bytes] | None:
    """Each token id's bytes as the tokenizer's `decode` writes them: empty for the special tokens it skips (those
    whose own text is valid UTF-8 but decode to nothing), found with one batched `decode` of the whole vocabulary.
    None where a token decodes to other text than its bytes (SentencePiece's "▁", <0x..> byte tokens): that
    tokenizer's text is not its tokens' bytes joined, so the engine detokenizes with `decode` itself."""
    size = max(token_bytes, default=-1) + 1
    pieces = [token_bytes.get(i, b"") for i in range(size)]
    texts = tokenizer.decode([[i] for i in range(size)])
    for i, (raw, text) in enumerate(zip(pieces, texts, strict=True)):
        if raw and not text and _is_utf8(raw):
            pieces[i] = b""
        elif text != raw.decode("utf-8", "ignore"):
            return None
    return pieces


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _vocab_size(model: Model) -> int:
    return len(model.token_bytes)


def _logprobs(model: Model, tokens: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """OpenAI's `logprobs.content` entries: the pipeline gives the chosen token's log-probability (from the
    distribution it was sampled from), no alternatives."""
    out = []
    for token, logprob in tokens:
        raw = model.token_bytes.get(token, b"")
        out.append(
            {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw), "top_logprobs": []}
        )
    return out


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


def _config(
    model: Model,
    body: dict[str, Any],
    defaults: dict[str, float],
    repeat_penalty: float,
    max_tokens: int,
    schema: dict[str, Any] | None,
    regex: str | None = None,
) -> Any:
    """The pipeline's GenerationConfig for one sequence: the request's sampling options, llama.cpp's defaults."""
    import openvino_genai as ov

    for key, neutral in _NEUTRAL.items():
        if body.get(key) is not None and body[key] != neutral:
            raise UnsupportedError(f"The local engine openvino does not support '{key}'.", param=key)
    config = ov.GenerationConfig()
    config.set_eos_token_id(model.eos)
    config.stop_token_ids = set(model.stop_ids)
    config.max_new_tokens = max_tokens
    temperature = _option(body, "temperature", defaults)
    if temperature <= 0:
        config.do_sample = False
    else:
        config.do_sample = True
        config.temperature = temperature
        config.top_p = _option(body, "top_p", defaults) or 1.0
        top_k = int(_option(body, "top_k", defaults))
        if top_k > 0:
            config.top_k = top_k
        config.min_p = _option(body, "min_p", defaults)
    config.repetition_penalty = float(body.get("repeat_penalty") or repeat_penalty)
    config.presence_penalty = float(body.get("presence_penalty") or 0.0)
    config.frequency_penalty = float(body.get("frequency_penalty") or 0.0)
    seed = body.get("seed")
    config.rng_seed = int(seed) % 2**63 if seed is not None else random.randrange(2**32)
    if schema is not None or regex is not None:
        structured = ov.StructuredOutputConfig()
        if schema is not None:
            # Our own grammar of the schema, whose whitespace is bounded (json_grammar.py: the pipeline's own JSON
            # grammar lets a sampling model write whitespace until max_tokens); the schema itself where the
            # conversion does not know a keyword.
            grammar = schema_grammar(schema)
            if grammar is not None:
                structured.grammar = grammar
            else:
                structured.json_schema = json.dumps(schema)
        else:
            structured.regex = regex
        config.structured_output_config = structured
    return config


def _option(body: dict[str, Any], key: str, defaults: dict[str, float]) -> float:
    value = body.get(key)
    return float(defaults[key] if value is None else value)
