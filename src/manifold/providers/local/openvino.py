"""`provider: local` with `engine: openvino`: a GGUF (or OpenVINO IR folder) run by OpenVINO GenAI's
`ContinuousBatchingPipeline`, many requests at once (batching.py), with prefix caching. The pipeline runs in a
worker process of its own (openvino_worker.py: its steps hold the GIL); the tokenizer, and the request path
(batched_provider.py's), in the gateway's.

What the pipeline cannot do here is refused with a 400 naming the parameter (docs/local-models.md#engines):
`top_logprobs` above 0 (it reports the sampled token's log-probability only), `logit_bias`, `n` above 1 in chat,
and legacy completions' `suffix` and `logprobs`.
`response_format` (`json_object`, `json_schema`) is grammar-constrained by the pipeline's structured output
(XGrammar), and so are function calls.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from manifold.config import DeploymentBase
from manifold.errors import InvalidRequestError, ServiceUnavailableError, UnsupportedError
from manifold.providers.base import of_kind
from manifold.providers.local.batched_provider import Ask, BatchingModelProvider, sampling_option
from manifold.providers.local.batching import DEFAULT_PREFILL_CHUNK, Detokenizer, Engine, WindowDetokenizer
from manifold.providers.local.json_grammar import schema_grammar
from manifold.providers.local.openvino_worker import RemotePipeline
from manifold.providers.local.xgrammar_check import schema_problem

DEFAULT_KV_CACHE_GB = 1
_NEUTRAL = {"typical_p": 1.0, "mirostat_mode": 0}  # llama.cpp-only options, accepted at their no-op value


class Model(NamedTuple):
    tokenizer: Any  # openvino_genai.Tokenizer of the model's file, as the pipeline's (which runs in the worker)
    engine: Engine
    eos: int
    stop_ids: frozenset[int]
    token_bytes: dict[int, bytes]  # for `logprobs`


class OpenVinoModelProvider(BatchingModelProvider):
    # Loads and tokenizes; the pipeline's steps run on the engine's own thread.
    thread_name = "manifold-openvino"
    engine_name = "openvino"
    refused = (*BatchingModelProvider.refused, "logit_bias")
    multiple_tool_calls = True  # its choice of a further call may end at once (_choices_regex)

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, cls.kind)
        path = deployment.model_path
        if path and not (Path(path).is_file() or (Path(path) / "openvino_model.xml").is_file()):
            return [f"model_path: {path!r} is neither a GGUF file nor an OpenVINO IR folder (with openvino_model.xml)"]
        return []

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
        scheduler = {
            "enable_prefix_caching": dep.prefix_caching,
            "cache_size": dep.kv_cache_gb or DEFAULT_KV_CACHE_GB,
            "max_num_seqs": self.max_batch,
            "max_num_batched_tokens": max(dep.prefill_chunk or DEFAULT_PREFILL_CHUNK, self.max_batch),
        }
        properties: dict[str, Any] = {"INFERENCE_NUM_THREADS": dep.threads} if dep.threads else {}
        if dep.kv_cache_type:
            properties["KV_CACHE_PRECISION"] = {"f16": "f16", "q8_0": "u8"}[dep.kv_cache_type]
        spec = {"path": str(path), "scheduler": scheduler, "properties": properties, "name": dep.model_name}
        pipeline = RemotePipeline(spec)  # the pipeline runs in a worker process: openvino_worker.py says why
        try:
            tokenizer = ov.Tokenizer(str(path))  # the pipeline's own, read from the same file
            eos = int(pipeline.info["eos"])
            stop_ids = frozenset({eos, *pipeline.info["stop_ids"]} - {-1})
            token_bytes = {int(i): bytes(b) for b, i in tokenizer.get_vocab().items()}
            pieces = _pieces(tokenizer, token_bytes)
        except BaseException:
            pipeline.close()
            raise
        detokenizer = partial(WindowDetokenizer, tokenizer.decode) if pieces is None else partial(Detokenizer, pieces)
        name = f"{self.thread_name}-engine"
        rebuild = partial(_new_worker, spec)
        engine = Engine(pipeline, detokenizer, stop_ids, self.max_batch, name, rebuild=rebuild, grammar_in_step=True)
        return Model(tokenizer, engine, eos, stop_ids, token_bytes)

    def closer(self, model: Any) -> Callable[[], None]:
        def close() -> None:
            # once the engine thread no longer steps the pipeline (it may have rebuilt it, or failed to)
            if model.engine.close() and model.engine.pipeline is not None:
                model.engine.pipeline.close()

        return close

    def check_chat(self, body: dict[str, Any], name: str) -> None:
        if body.get("top_logprobs"):
            raise UnsupportedError(
                f"The model '{name}' (local, engine openvino) reports the chosen token's logprob only: "
                "'top_logprobs' must be 0; the llama_cpp engines have them (docs/local-models.md#engines).",
                param="top_logprobs",
            )

    def chat_prompt(self, model: Model, messages: list[dict[str, Any]], suffix: str = "") -> tuple[Any, int]:
        text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True) + suffix
        ids = model.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0].tolist()
        return ids, len(ids)

    def completion_prompt(self, model: Model, prompt: str | list[int], suffix: str | None = None) -> tuple[Any, int]:
        if isinstance(prompt, str):
            ids = model.tokenizer.encode(prompt, add_special_tokens=True).input_ids.data[0].tolist()
            if ids:
                return ids, len(ids)
            prompt = []
        tokens = prompt or [int(model.tokenizer.get_bos_token_id())]  # as llama.cpp: an empty prompt starts at BOS
        return list(tokens), len(tokens)

    def config(self, model: Model, body: dict[str, Any], ask: Ask) -> Any:
        params = _config(model, body, ask)
        if ask.top_logprobs is not None:
            params["logprobs"] = 1
        return params

    def token_logprobs(self, model: Model, tokens: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        """The pipeline gives the chosen token's log-probability (from the distribution it was sampled from), no
        alternatives."""
        out = []
        for token, logprob in tokens:
            raw = model.token_bytes.get(token, b"")
            out.append(
                {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw), "top_logprobs": []}
            )
        return out

    def vocab_size(self, model: Model) -> int:
        return len(model.token_bytes)

    def decode(self, model: Model, tokens: list[int]) -> str:
        return str(model.tokenizer.decode(tokens))


def _new_worker(spec: dict[str, Any], old: RemotePipeline) -> RemotePipeline:
    """The engine's `rebuild`: the worker a failed step left unusable ends before the new one takes its memory."""
    old.close()
    return RemotePipeline(spec)


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


def _config(model: Model, body: dict[str, Any], ask: Ask) -> dict[str, Any]:
    """One sequence's generation parameters (the worker makes the pipeline's GenerationConfig of them:
    openvino_worker.generation_config): the request's sampling options, llama.cpp's defaults."""
    defaults, schema = ask.defaults, ask.schema
    regex = None if ask.choices is None else _choices_regex(ask.choices)

    for key, neutral in _NEUTRAL.items():
        if body.get(key) is not None and body[key] != neutral:
            raise UnsupportedError(f"The local engine openvino does not support '{key}'.", param=key)
    params: dict[str, Any] = {"eos": model.eos, "stop_ids": sorted(model.stop_ids), "max_new_tokens": ask.max_tokens}
    temperature = sampling_option(body, "temperature", defaults)
    if temperature <= 0:
        params["do_sample"] = False
    else:
        params["do_sample"] = True
        params["temperature"] = temperature
        params["top_p"] = sampling_option(body, "top_p", defaults) or 1.0
        top_k = int(sampling_option(body, "top_k", defaults))
        if top_k > 0:
            params["top_k"] = top_k
        params["min_p"] = sampling_option(body, "min_p", defaults)
    params["repetition_penalty"] = float(body.get("repeat_penalty") or ask.repeat_penalty)
    params["presence_penalty"] = float(body.get("presence_penalty") or 0.0)
    params["frequency_penalty"] = float(body.get("frequency_penalty") or 0.0)
    seed = body.get("seed")
    params["rng_seed"] = int(seed) % 2**63 if seed is not None else random.randrange(2**32)
    if schema is not None:
        problem = schema_problem(schema)
        if problem is not None:
            raise InvalidRequestError(
                f"The local model (engine openvino) cannot follow the JSON schema in '{ask.schema_param}': "
                f"{problem} (docs/local-models.md#engines).",
                param=ask.schema_param,
            )
        # Our own grammar of the schema, whose whitespace is bounded (json_grammar.py: the pipeline's own JSON
        # grammar lets a sampling model write whitespace until max_tokens); the schema itself where the
        # conversion does not know a keyword.
        grammar = schema_grammar(schema)
        if grammar is not None:
            params["grammar"] = grammar
        else:
            params["json_schema"] = json.dumps(schema)
    elif regex is not None:
        params["regex"] = regex
    return params


def _choices_regex(choices: list[str]) -> str:
    """A regex of exactly these texts. An empty one (the answer may end at once: no further tool call) makes the
    others optional: XGrammar refuses an empty alternative ("a|b|"), and lets the sequence end where the regex can."""
    regex = "|".join(re.escape(c) for c in choices if c)
    return f"({regex})?" if "" in choices else regex
