"""llama.cpp run as a continuous-batching pipeline: many sequences decoded together in one `llama_decode` per step,
through llama-cpp-python's low-level API. It has the interface batching.Engine drives (`add_request`, `step`,
`has_non_finished_requests`, handles with `can_read`/`read`/`get_status`/`cancel`), the same as OpenVINO GenAI's
`ContinuousBatchingPipeline`, so one engine thread, one scheduler and one request path serve both.

How a step is made:
- Every sequence owns a slot: a llama.cpp sequence id with a KV stream of its own (`kv_unified: false`, so a
  token attends to its own sequence's cells only, and a batched sequence's greedy output is its lone output).
- Decoding sequences put their last token in the batch; then prefilling ones put the next chunk of their prompts,
  up to `prefill_chunk` tokens a step in all, so a long prompt is spread over steps instead of stalling the others.
- Logits are asked for where a token is sampled next: each decoding sequence's token, and a prompt's last one.

Prefix caching: a slot keeps the tokens whose KV it holds after its sequence ends. A new sequence takes the free
slot whose tokens share the longest prefix with its prompt, drops the cells after that prefix
(`llama_memory_seq_rm`) and computes only the rest: a system prompt or a conversation's history that an earlier
request computed is not computed again. When another slot (running or not) holds a longer prefix, its stream is
copied into the new sequence's first (`llama_memory_seq_cp`: llama.cpp copies whole streams between KV streams,
about a millisecond per 100 cells of context here, where computing a token of prompt costs several).

Sampling is per sequence: its own sampler chain (logit bias, repetition/frequency/presence penalties, top-k,
typical, top-p, min-p, temperature, then a seeded draw; or Mirostat; or greedy), in the order the serialized
engine's llama-cpp-python chain has them. A grammar (structured output, tool arguments) is not applied to every
candidate: the token is drawn from the unconstrained chain and tested against the grammar alone; only when the grammar
rejects it is the draw made again over the candidates the grammar allows (llama.cpp's `common_sampler` does the
same; applying a grammar to all 49k candidates costs milliseconds a token).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import numpy as np

from manifold.providers.local.batching import DEFAULT_PREFILL_CHUNK

__all__ = ["GenerationOutput", "LlamaBatchPipeline", "Sampling", "Status"]

MIN_COPY = 16  # prompt tokens a copied prefix must save over the slot's own
PENALTY_LAST_N = 64  # llama-cpp-python's `last_n_tokens_size`: the tokens penalties look back on


class Status(Enum):
    RUNNING = 0
    FINISHED = 1
    CANCELLED = 2
    FAILED = 3  # `Handle.failure` says why


@dataclass(frozen=True)
class Sampling:
    """One sequence's sampling options (the request's, with the defaults the provider filled in)."""

    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0
    mirostat_mode: int = 0  # 1 or 2: Mirostat (v1, v2) in place of top-k, typical, top-p, min-p and temperature
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF; its rule `root`
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen token's; n: with the n likeliest


class GenerationOutput(NamedTuple):
    """What `Handle.read` gives (the names of OpenVINO GenAI's `GenerationOutput`): token ids, and per token its
    log-probability (a float), or (logprob, [(token, logprob), ...]) with `top_logprobs`."""

    generated_ids: list[int]
    generated_log_probs: list[Any]


class _Slot:
    __slots__ = ("busy", "index", "tokens")

    def __init__(self, index: int) -> None:
        self.index = index
        self.tokens: list[int] = []  # whose KV the slot's stream holds, positions 0..len-1
        self.busy = False


class Handle:
    """One sequence in the pipeline."""

    __slots__ = (
        "_grammar",
        "_lps",
        "_out",
        "_pipeline",
        "_sampler",
        "failure",
        "next_token",
        "prefilled",
        "prompt",
        "reused",
        "sampling",
        "slot",
        "status",
    )

    def __init__(self, pipeline: LlamaBatchPipeline, prompt: list[int], sampling: Sampling, slot: _Slot) -> None:
        self._pipeline = pipeline
        self.prompt = prompt
        self.sampling = sampling
        self.slot = slot
        self.status = Status.RUNNING
        self.prefilled = 0  # prompt tokens in the KV cache
        self.reused = 0  # of them, taken from the slot's cache
        self.next_token = -1  # sampled, not yet decoded (-1: still prefilling)
        self.failure = ""
        self._out: list[int] = []
        self._lps: list[Any] = []
        self._sampler: Any = None
        self._grammar: Any = None

    def can_read(self) -> bool:
        return bool(self._out)

    def read(self) -> dict[int, GenerationOutput]:
        out, self._out = self._out, []
        lps, self._lps = self._lps, []
        return {0: GenerationOutput(out, lps)}

    def get_status(self) -> Status:
        return self.status

    def cancel(self) -> None:
        """On the engine thread: out of the batch at once; its slot keeps what it computed, for a later prefix."""
        if self.status is Status.RUNNING:
            self.status = Status.CANCELLED
        self._pipeline._release(self)


class LlamaBatchPipeline:
    """A llama.cpp model and context for `n_seq` sequences of up to `n_ctx_seq` tokens each. Used from one thread
    (the engine's), but tokenizing (`tokenize`) is safe from any: it reads the vocabulary only."""

    def __init__(
        self,
        path: str,
        n_seq: int,
        n_ctx_seq: int,
        threads: int | None = None,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        prefix_caching: bool = True,
        kv_cache_type: str | None = None,
    ) -> None:
        import llama_cpp as lib
        from llama_cpp import _internals, _logger

        _logger.set_verbose(False)  # llama.cpp's load and context chatter: errors only (as `Llama(verbose=False)`)

        self._lib = lib
        model_params = lib.llama_model_default_params()
        self.model = _internals.LlamaModel(path_model=path, params=model_params, verbose=False)
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_seq_max = n_seq
        params.n_batch = max(prefill_chunk, n_seq)
        params.n_ubatch = params.n_batch
        params.kv_unified = False  # a KV stream per sequence
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if kv_cache_type == "q8_0":  # flash attention reads a quantized V cache (f16 otherwise)
            params.type_k = params.type_v = lib.GGML_TYPE_Q8_0
        params.no_perf = True
        if threads:
            params.n_threads = params.n_threads_batch = threads
        self.context = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.ctx = self.context.ctx
        self.memory = self.context.memory
        self.vocab = self.model.vocab
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_seq = n_seq
        self.n_ctx_seq = n_ctx_seq
        self.prefill_chunk = prefill_chunk
        self.prefix_caching = prefix_caching
        self.copied = 0  # prefixes copied from another slot (for tests and the benchmark)
        self.grammar_tests = 0  # tokens a grammar judged, and of them the ones it rejected (drawn again)
        self.redraws = 0
        self.eog = frozenset(t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self.vocab, t))
        self._batch = lib.llama_batch_init(params.n_batch, 0, 1)
        self._slots = [_Slot(i) for i in range(n_seq)]
        self._running: list[Handle] = []
        # Candidates for the sampling that needs them (a grammar's second draw): one array, reused.
        self._cand = np.zeros(
            self.n_vocab, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        )
        self._ids = np.arange(self.n_vocab, dtype=np.intc)
        self._cand_array = lib.llama_token_data_array(
            data=self._cand.ctypes.data_as(lib.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False
        )
        self._one = (lib.llama_token_data * 1)()
        self._one_array = lib.llama_token_data_array(
            data=ctypes.cast(self._one, lib.llama_token_data_p), size=1, selected=-1, sorted=False
        )

    # -- tokens ----------------------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool, special: bool = True) -> list[int]:
        return list(self.model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def pieces(self) -> list[bytes]:
        """Each token's bytes as text shows them (empty for control tokens, which the output skips). Through
        `llama_token_to_piece` itself: llama-cpp-python's `token_to_piece` returns its whole buffer, padding
        included."""
        buf = ctypes.create_string_buffer(256)
        out = []
        for token in range(self.n_vocab):
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            out.append(buf.raw[:n] if n > 0 else b"")
        return out

    def grammar_ok(self, grammar: str) -> bool:
        """Whether llama.cpp parses `grammar` (GBNF, rule `root`)."""
        sampler = self._lib.llama_sampler_init_grammar(self.vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            return False
        self._lib.llama_sampler_free(sampler)
        return True

    # -- what the engine drives ------------------------------------------------------------------------------------

    def add_request(self, request_id: int, prompt: Sequence[int], sampling: Sampling) -> Handle:
        prompt = list(prompt)
        if not prompt or len(prompt) >= self.n_ctx_seq:
            raise ValueError(f"a prompt of {len(prompt)} tokens does not fit a sequence of {self.n_ctx_seq}")
        free = [s for s in self._slots if not s.busy]
        if not free:
            raise RuntimeError("every sequence slot is taken")
        sampler = self._chain(sampling)
        grammar = None
        if sampling.grammar is not None:
            grammar = self._lib.llama_sampler_init_grammar(self.vocab, sampling.grammar.encode("utf-8"), b"root")
            if not grammar:
                self._lib.llama_sampler_free(sampler)
                raise ValueError("the grammar does not parse")
        # The free slot whose cached tokens share the longest prefix with this prompt (ties: the emptiest).
        slot = max(free, key=lambda s: (_common(s.tokens, prompt), -len(s.tokens)))
        keep = min(_common(slot.tokens, prompt), len(prompt) - 1) if self.prefix_caching else 0
        if self.prefix_caching:
            donor = max(self._slots, key=lambda s: _common(s.tokens, prompt))
            shared = min(_common(donor.tokens, prompt), len(prompt) - 1)
            if donor is not slot and shared > keep + MIN_COPY:
                self._lib.llama_memory_seq_cp(self.memory, donor.index, slot.index, -1, -1)
                slot.tokens = list(donor.tokens)
                keep = shared
                self.copied += 1
        handle = Handle(self, prompt, sampling, slot)
        handle._sampler, handle._grammar = sampler, grammar
        # Keep the common prefix, less one token at least: the prompt's last token is decoded for its logits.
        self._lib.llama_memory_seq_rm(self.memory, slot.index, keep, -1)
        del slot.tokens[keep:]
        handle.prefilled = handle.reused = keep
        slot.busy = True
        self._running.append(handle)
        return handle

    def has_non_finished_requests(self) -> bool:
        return bool(self._running)

    def step(self) -> None:
        """One `llama_decode`: a token for every decoding sequence, prompt chunks for the others; then a token
        sampled for every sequence whose logits came out."""
        lib, batch = self._lib, self._batch
        n = 0
        sampled: list[tuple[Handle, int]] = []  # (handle, the batch index of its logits)
        for h in self._running:
            if h.next_token >= 0:
                slot = h.slot
                n = _put(batch, n, h.next_token, len(slot.tokens), slot.index, True)
                slot.tokens.append(h.next_token)
                sampled.append((h, n - 1))
        budget = max(self.prefill_chunk - n, 0)
        for h in self._running:
            if h.next_token >= 0 or budget == 0:
                continue
            slot = h.slot
            start = h.prefilled
            end = min(len(h.prompt), start + budget)
            for pos in range(start, end):
                n = _put(batch, n, h.prompt[pos], pos, slot.index, pos == len(h.prompt) - 1)
            slot.tokens.extend(h.prompt[start:end])
            h.prefilled = end
            budget -= end - start
            if end == len(h.prompt):
                sampled.append((h, n - 1))
        if n == 0:
            return
        batch.n_tokens = n
        code = lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed ({code})")
        for h, index in sampled:
            self._sample(h, index)

    def reset(self) -> LlamaBatchPipeline:
        """The engine's `rebuild` after a step that raised: every running sequence released (the engine has ended
        them) and the KV cache cleared, since a failed `llama_decode` leaves the cells of its batch undefined and
        the slots' token lists already extended by it. The model and context stay: the same pipeline, usable."""
        for h in list(self._running):
            h.status = Status.FAILED
            h.failure = "the pipeline was reset after a step that failed"
            self._release(h)
        self._lib.llama_memory_clear(self.memory, True)
        for slot in self._slots:
            slot.tokens = []
        return self

    def close(self) -> None:
        for h in list(self._running):
            h.cancel()
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self.context.close()  # type: ignore[no-untyped-call]
        self.model.close()  # type: ignore[no-untyped-call]

    # -- inside ----------------------------------------------------------------------------------------------------

    def _chain(self, s: Sampling) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        if s.logit_bias:
            biases = (lib.llama_logit_bias * len(s.logit_bias))(
                *(lib.llama_logit_bias(token, bias) for token, bias in s.logit_bias.items())
            )
            add(chain, lib.llama_sampler_init_logit_bias(self.n_vocab, len(s.logit_bias), biases))
        add(
            chain,
            lib.llama_sampler_init_penalties(
                self.n_vocab, PENALTY_LAST_N, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
            ),
        )
        if s.temperature <= 0:
            add(chain, lib.llama_sampler_init_greedy())
            return chain
        seed = s.seed & 0xFFFFFFFF
        if s.mirostat_mode == 1:
            add(chain, lib.llama_sampler_init_mirostat(self.n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100))
            return chain
        if s.mirostat_mode == 2:
            add(chain, lib.llama_sampler_init_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta))
            return chain
        add(chain, lib.llama_sampler_init_top_k(s.top_k))
        add(chain, lib.llama_sampler_init_typical(s.typical_p, 1))
        add(chain, lib.llama_sampler_init_top_p(s.top_p, 1))
        add(chain, lib.llama_sampler_init_min_p(s.min_p, 1))
        add(chain, lib.llama_sampler_init_temp(s.temperature))
        add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def _sample(self, h: Handle, index: int) -> None:
        lib = self._lib
        if h._grammar is None:
            token = int(lib.llama_sampler_sample(h._sampler, self.ctx, index))  # applies and accepts, in C
        else:
            token = self._draw(h, index, constrained=False)
            one = self._one[0]
            one.id, one.logit, one.p = token, 1.0, 0.0  # type: ignore[assignment]
            self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
            lib.llama_sampler_apply(h._grammar, ctypes.byref(self._one_array))
            self.grammar_tests += 1
            if math.isinf(self._one[0].logit):  # rejected: draw again among what the grammar allows
                self.redraws += 1
                token = self._draw(h, index, constrained=True)
                if token < 0:
                    # The grammar allows no token here (llama.cpp's grammars cannot begin some 4-byte UTF-8
                    # characters a token at a time): accepting one would abort the whole process in llama.cpp.
                    h.status = Status.FAILED
                    written = len(h.slot.tokens) - len(h.prompt)
                    h.failure = f"its output grammar allows no token the model can write after {written} tokens"
                    self._release(h)
                    return
            lib.llama_sampler_accept(h._grammar, token)
            lib.llama_sampler_accept(h._sampler, token)
        top = h.sampling.top_logprobs
        if top is not None:
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
            logprobs = logits - _logsumexp(logits)
            chosen = float(logprobs[token])
            if top > 0:
                best = np.argpartition(-logprobs, top)[:top]
                best = best[np.argsort(-logprobs[best], kind="stable")]
                h._lps.append((chosen, [(int(t), float(logprobs[t])) for t in best]))
            else:
                h._lps.append(chosen)
        else:
            h._lps.append(0.0)
        h._out.append(token)
        if token in self.eog or len(h.slot.tokens) + 1 >= self.n_ctx_seq:
            h.status = Status.FINISHED
            self._release(h)
        else:
            h.next_token = token

    def _draw(self, h: Handle, index: int, constrained: bool) -> int:
        """A token from the sequence's chain over every candidate (after the grammar, when `constrained`),
        without accepting it; -1 when the grammar left no candidate."""
        lib = self._lib
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        array = self._cand_array
        array.size, array.selected, array.sorted = self.n_vocab, -1, False
        if constrained:
            lib.llama_sampler_apply(h._grammar, ctypes.byref(array))
        lib.llama_sampler_apply(h._sampler, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise RuntimeError("the sampler chose no token")
        chosen = array.data[array.selected]
        if constrained and math.isinf(chosen.logit):
            return -1
        return int(chosen.id)

    def _release(self, h: Handle) -> None:
        if h in self._running:
            self._running.remove(h)
        h.slot.busy = False
        h.next_token = -1
        lib = self._lib
        if h._sampler is not None:
            lib.llama_sampler_free(h._sampler)
            h._sampler = None
        if h._grammar is not None:
            lib.llama_sampler_free(h._grammar)
            h._grammar = None


def _put(batch: Any, n: int, token: int, pos: int, seq: int, logits: bool) -> int:
    batch.token[n] = token
    batch.pos[n] = pos
    batch.n_seq_id[n] = 1
    batch.seq_id[n][0] = seq
    batch.logits[n] = logits
    return n + 1


def _common(a: list[int], b: list[int]) -> int:
    """The length of the common prefix: slices compared in C, by bisection (a Python loop over thousands of tokens
    per slot, per request, took milliseconds)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _logsumexp(x: Any) -> float:
    peak = float(np.max(x))
    return peak + math.log(float(np.sum(np.exp(x - peak))))
