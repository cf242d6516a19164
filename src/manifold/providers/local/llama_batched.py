"""`provider: local` with `engine: llama_cpp_batched`: a GGUF run by llama.cpp (llama-cpp-python's low-level API)
as a continuous-batching pipeline (llama_batch.py) under the same engine thread and request path as the openvino
engine (batching.py, batched_provider.py): many requests decoded together, each with its own sampling, per-slot
prefix caching, and everything the serialized engine samples with — `logit_bias`, `top_logprobs`, grammars.

What it cannot do is refused with a 400 naming the parameter: `n` above 1 in chat, legacy completions' `suffix`
and `logprobs`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from manifold.errors import InvalidRequestError, UnsupportedError
from manifold.providers.local.batched_provider import Ask, BatchingModelProvider, sampling_option
from manifold.providers.local.batching import DEFAULT_PREFILL_CHUNK, Detokenizer, Engine
from manifold.providers.local.crash_check import refuse_if_it_crashes
from manifold.providers.local.gbnf import check_tools, choices_grammar, schema_gbnf
from manifold.providers.local.llama_batch import LlamaBatchPipeline, Sampling

DEFAULT_MAX_BATCH = 8
# A GGUF without a chat template: ChatML, as llama.cpp's own default.
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Model(NamedTuple):
    pipeline: LlamaBatchPipeline
    engine: Engine
    pieces: list[bytes]  # each token's bytes (empty for control tokens)
    formatter: Any  # the GGUF's chat template (llama-cpp-python's Jinja2ChatFormatter), compiled once


class LlamaBatchedModelProvider(BatchingModelProvider):
    # Loads and tokenizes; the decoding steps run on the engine's own thread.
    thread_name = "manifold-llama-batched"
    engine_name = "llama_cpp_batched"
    multiple_tool_calls = True
    takes_suffix = True  # as the llama_cpp engine does (_infill_prompt)

    @property
    def max_batch(self) -> int:
        return self.deployment.max_batch or DEFAULT_MAX_BATCH

    def closer(self, model: Model) -> Callable[[], None]:
        def close() -> None:
            if model.engine.close():  # the engine thread no longer uses the context
                model.pipeline.close()

        return close

    def prepare(self, path: Path) -> None:
        refuse_if_it_crashes(path, self.deployment.model_name)

    def load(self, path: Path) -> Model:
        dep = self.deployment
        pipeline = LlamaBatchPipeline(
            str(path),
            self.max_batch,
            dep.context_length,
            dep.threads,
            prefill_chunk=dep.prefill_chunk or DEFAULT_PREFILL_CHUNK,
            prefix_caching=dep.prefix_caching,
            kv_cache_type=dep.kv_cache_type,
        )
        pieces = pipeline.pieces()
        name = f"{self.thread_name}-engine"
        rebuild = LlamaBatchPipeline.reset  # a step that raised: the same pipeline, its sequences and cache cleared
        engine = Engine(pipeline, partial(Detokenizer, pieces), pipeline.eog, self.max_batch, name, rebuild=rebuild)
        from llama_cpp import llama_chat_format

        model = pipeline.model
        eos, bos = model.token_eos(), model.token_bos()
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=model.metadata().get("tokenizer.chat_template") or _CHATML,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        return Model(pipeline, engine, pieces, formatter)

    # -- the engine's part of the request path (batched_provider.py) ---------------------------------------------

    def check_chat(self, body: dict[str, Any], name: str) -> None:
        top = body.get("top_logprobs")
        if top and not body.get("logprobs"):
            raise InvalidRequestError(
                "Invalid 'top_logprobs': it needs 'logprobs' set to true.", param="top_logprobs", code="invalid_value"
            )
        if body.get("tool_choice") != "none":
            check_tools(body.get("tools"), "llama_cpp_batched")

    def chat_prompt(self, model: Model, messages: list[dict[str, Any]], suffix: str = "") -> tuple[Any, int]:
        result = model.formatter(messages=messages)
        ids = model.pipeline.tokenize(result.prompt + suffix, add_bos=not result.added_special)
        return ids, len(ids)

    def completion_prompt(self, model: Model, prompt: str | list[int], suffix: str | None = None) -> tuple[Any, int]:
        if suffix is not None:
            return _infill_prompt(model, prompt, suffix)
        ids = model.pipeline.tokenize(prompt, add_bos=True) if isinstance(prompt, str) else list(prompt)
        if not ids:
            ids = [model.pipeline.model.token_bos()]  # as llama.cpp: an empty prompt starts at BOS
        return ids, len(ids)

    def config(self, model: Model, body: dict[str, Any], ask: Ask) -> Sampling:
        grammar = None
        if ask.choices is not None:
            grammar = choices_grammar(ask.choices)
        elif ask.schema is not None:
            grammar = _schema_grammar(ask.schema, ask.schema_param)
        defaults = ask.defaults
        if grammar is not None and not model.pipeline.grammar_ok(grammar):
            raise UnsupportedError(
                "The local engine llama_cpp_batched cannot constrain its output to this schema.",
                param=ask.schema_param,
            )
        seed = body.get("seed")
        return Sampling(
            temperature=sampling_option(body, "temperature", defaults),
            top_p=sampling_option(body, "top_p", defaults),
            top_k=int(sampling_option(body, "top_k", defaults)),
            min_p=sampling_option(body, "min_p", defaults),
            typical_p=float(body.get("typical_p") or 1.0),
            repeat_penalty=float(body.get("repeat_penalty") or ask.repeat_penalty),
            frequency_penalty=float(body.get("frequency_penalty") or 0.0),
            presence_penalty=float(body.get("presence_penalty") or 0.0),
            seed=int(seed) if seed is not None else random.randrange(2**32),
            mirostat_mode=int(body.get("mirostat_mode") or 0),  # 0, 1 or 2 (generation.check_sampling_extras)
            mirostat_tau=float(body.get("mirostat_tau") or 5.0),
            mirostat_eta=float(body.get("mirostat_eta") or 0.1),
            logit_bias=_logit_bias(body.get("logit_bias"), len(model.pieces)),
            grammar=grammar,
            top_logprobs=ask.top_logprobs,
        )

    def token_logprobs(self, model: Model, tokens: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        """Log-probabilities from the model's raw distribution (before penalties and temperature), as the
        serialized engine reports them; with `top_logprobs`, the likeliest tokens at each place."""
        out = []
        for token, given in tokens:
            logprob, top = given if isinstance(given, tuple) else (given, [])
            out.append({**_entry(model, token, logprob), "top_logprobs": [_entry(model, t, lp) for t, lp in top]})
        return out

    def vocab_size(self, model: Model) -> int:
        return len(model.pieces)

    def decode(self, model: Model, tokens: list[int]) -> str:
        return b"".join(model.pieces[t] for t in tokens).decode("utf-8", "replace")


def _entry(model: Model, token: int, logprob: float) -> dict[str, Any]:
    raw = model.pieces[token] if 0 <= token < len(model.pieces) else b""
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def _schema_grammar(schema: dict[str, Any], param: str) -> str:
    """GBNF for a JSON schema, from llama-cpp-python's converter (the serialized engine's): whitespace between
    tokens is bounded; `{"type": "object"}` (json_object) is any JSON object."""
    from llama_cpp import llama_grammar

    if schema == {"type": "object"}:
        return str(llama_grammar.JSON_GBNF)
    return schema_gbnf(schema, param, "llama_cpp_batched")  # a schema it cannot follow: a 400 naming `param`


def _logit_bias(bias: Any, vocab: int) -> dict[int, float]:
    if not bias:
        return {}
    out: dict[int, float] = {}
    for key, value in dict(bias).items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            token = -1
        if not 0 <= token < vocab:
            raise InvalidRequestError(
                f"Invalid 'logit_bias': token id {key!r} is outside the vocabulary (0 to {vocab - 1}).",
                param="logit_bias",
                code="invalid_value",
            )
        out[token] = float(value)
    return out


# The prefix, suffix and middle markers llama-cpp-python 0.3.36's `create_completion` puts around a prompt given a
# `suffix` (its fill-in-the-middle layout, with token id 0 for all three: placeholders it marks as to be fixed), so the
# llama_cpp engine's legacy completions with a `suffix` read the same prompt here.
_INFILL_MARK = 0


def _infill_prompt(model: Model, prompt: str | list[int], suffix: str) -> tuple[list[int], int]:
    """A legacy prompt with a `suffix`, laid out as the llama_cpp engine (llama-cpp-python) lays it out: the model's
    BOS (or CLS) where it adds one, the marker, the prompt (text with special tokens not parsed, or token ids as
    they are), the marker, the suffix, the marker, then its SEP (or EOS) where it adds one or has a SEP."""
    llama = model.pipeline.model
    tokenize = model.pipeline.tokenize
    if isinstance(prompt, str):
        body = tokenize(prompt, add_bos=False, special=False) if prompt else []
    else:
        body = list(prompt)
    tail: list[int] = []
    if suffix:
        if llama.metadata().get("tokenizer.ggml.add_space_prefix", "true") == "true":
            tail = tokenize("\u263a" + suffix, add_bos=False, special=False)[2:]  # its way around the leading space
        else:
            tail = tokenize(suffix, add_bos=False, special=False)
    cls, sep = llama.token_cls(), llama.token_sep()
    first = cls if cls != -1 else llama.token_bos()
    head = [first] if llama.add_bos_token() and first != -1 else []
    end = [sep if sep != -1 else llama.token_eos()] if llama.add_eos_token() or sep != -1 else []
    ids = [*head, _INFILL_MARK, *body, _INFILL_MARK, *tail, _INFILL_MARK, *end]
    return ids, len(ids)
