"""Continuous batching for a local model: one engine thread owns the pipeline (OpenVINO GenAI's
`ContinuousBatchingPipeline`, in a worker process; or llama_batch.py's) and runs its steps; requests from the event
loop join and leave between steps.

Each turn of the engine thread: admit the sequences submitted since the last turn (`add_request`: the pipeline
prefills them, chunked, alongside the others' decoding), cancel those whose client left (`GenerationHandle.cancel`:
their KV blocks are freed by the next step), run one step (one token for every running sequence), and hand each
sequence's new tokens to it: detokenized incrementally, cut at a stop sequence (which may span tokens), streamed
to the event loop with `call_soon_threadsafe`. A sequence that ends (end of sequence, a stop sequence,
`max_tokens`) is cancelled in the pipeline at once, so its slot is free for the next step.

The pipeline's `step()` must leave the GIL to the event loop while it computes: llama.cpp's, through ctypes,
does; OpenVINO GenAI's binding does not, so the openvino engine's pipeline runs in a worker process and its
`step()` here is a round trip over a pipe (openvino_worker.py).

A step that raises (OpenVINO GenAI compiles a sequence's grammar inside `step()`, and one it cannot compile makes
the step raise and leaves the pipeline unusable; or the openvino worker died; or `llama_decode` failed) costs the
sequences of that batch, not the engine: with a `rebuild` the engine ends them with a clean error, has the pipeline
replaced (openvino: the worker closed and a new one started) or reset (llama_cpp_batched: every sequence released,
the KV cache cleared), and serves the sequences waiting and those that come after (`rebuilds` counts it). A sequence
with a schema the pipeline compiles inside its step (openvino) that had no token yet, when it is the only such one,
is taken for the cause and ends with a 400 naming its parameter; the others end with a 502 (the router retries a
request that has sent nothing yet).

At most `max_batch` sequences are in the pipeline at once (its own `max_num_seqs` does not bound them); more wait
in the engine. Requests are bounded before the engine too, by the router: the deployment's concurrency limit is the
batch size, and its bounded queue answers 429 with Retry-After when full (routing/health.py), so a client that
leaves passes its slot to the next waiting request.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import itertools
import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from manifold.errors import BadGatewayError, InvalidRequestError
from manifold.providers.local.generation import StopText

log = logging.getLogger("manifold.local")
# The most tokens one step computes when a deployment sets no `prefill_chunk` (docs/local-models.md says why 256)
DEFAULT_PREFILL_CHUNK = 256

# (kind, index, payload): ("text", i, str) | ("end", i, (finish_reason, completion_tokens)) | ("error", i, exc) |
# ("tokens", i, [(token id, logprob), ...]): with `logprobs`, the tokens of the next "text" event, just before it
Event = tuple[str, int, Any]

# What a native library's message carries that is no business of a client's: times and its build's source paths.
_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\]\s*|Check '[^']*' failed at |(?:/[^\s:]+)+:\d+:\s*")


def clean_reason(exc: BaseException) -> str:
    """A native exception's message for a client: without the timestamps and source paths, on one line."""
    text = " ".join(line.strip() for line in _NOISE.sub("", str(exc)).splitlines() if line.strip())
    return text[:300] or type(exc).__name__


class Outbox:
    """The event loop's end of one request: events of its sequences, put from the engine thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class Detokenizer:
    """Token ids in, text out, as it becomes certain: each token's bytes through an incremental UTF-8 decoder, which
    holds the bytes of a character split across tokens until its last one. `pieces[id]` is a token's bytes (empty
    for a special token, which decoding skips); invalid bytes are dropped, as the tokenizer's `decode` drops them.
    For tokenizers whose `decode` is the concatenation of their tokens' bytes (byte-level BPE; openvino._pieces
    checks); calling `decode` instead (WindowDetokenizer) runs the detokenizer model twice a token, about 0.2 ms."""

    __slots__ = ("_pieces", "_utf8")

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self._pieces = pieces
        self._utf8 = codecs.getincrementaldecoder("utf-8")("ignore")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self._pieces[token] if 0 <= token < len(self._pieces) else b"")

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class WindowDetokenizer:
    """Token ids in, text out, through the tokenizer's own `decode`, for tokenizers whose text is not their tokens'
    bytes end to end (SentencePiece's "▁" and <0x..> byte tokens): the last tokens are decoded together with a few
    before them, and nothing is emitted while they end inside a character (the tokenizer drops an incomplete one)."""

    __slots__ = ("_decode", "_ids", "_prefix", "_read")

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # where the decoded window starts
        self._read = 0  # what of it was already emitted

    def feed(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        return self._decode(self._ids[self._prefix :])[len(before) :]


class BatchSequence:
    """One generated sequence, from its submission to its end."""

    __slots__ = (
        "cancelled",
        "config",
        "detok",
        "ended",
        "generated",
        "handle",
        "index",
        "max_tokens",
        "outbox",
        "pending",
        "prompt",
        "prompt_tokens",
        "schema_param",
        "stops",
    )

    def __init__(
        self,
        prompt: Any,
        config: Any,
        stop: list[str],
        max_tokens: int,
        index: int,
        outbox: Outbox,
        logprobs: bool = False,
    ) -> None:
        # with `logprobs`: the tokens (id, logprob) whose text has not been sent yet
        self.pending: list[tuple[int, Any]] | None = [] if logprobs else None
        self.prompt = prompt  # what add_request takes (an ov.Tensor of token ids)
        self.prompt_tokens = 0  # what the request's usage counts for it
        self.config = config  # its GenerationConfig
        self.stops = StopText(stop)
        self.max_tokens = max_tokens
        self.index = index
        self.outbox = outbox
        self.detok: Detokenizer | WindowDetokenizer | None = None
        self.handle: Any = None
        self.generated = 0
        self.cancelled = False  # set from the event loop when the client leaves
        self.ended = False
        # the request parameter of a schema the pipeline compiles itself (in a step, where it may fail), if any
        self.schema_param: str | None = None

    def take(self, token: int, logprob: Any, end_ids: frozenset[int]) -> None:
        """One generated token (on the engine thread)."""
        assert self.detok is not None
        if token in end_ids:
            self.end("stop")
            return
        self.generated += 1
        if self.pending is not None:
            self.pending.append((token, logprob))
        text, stopped = self.stops.feed(self.detok.feed(token))
        if text:
            self._text(text)
        if stopped:
            self.end("stop", stopped=True)
        elif self.generated >= self.max_tokens:
            self.end("length")

    def end(self, finish: str, stopped: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        if not stopped and self.detok is not None:
            tail, stopped = self.stops.feed(self.detok.flush())
            tail += "" if stopped else self.stops.flush()
            if tail:
                self._text(tail)
            finish = "stop" if stopped else finish
        self.outbox.put(("end", self.index, (finish, self.generated)))

    def _text(self, text: str) -> None:
        if self.pending:
            self.outbox.put(("tokens", self.index, self.pending))
            self.pending = []
        self.outbox.put(("text", self.index, text))

    def fail(self, exc: BaseException) -> None:
        if not self.ended:
            self.ended = True
            self.outbox.put(("error", self.index, exc))


class Engine:
    """The engine thread and what crosses to it."""

    def __init__(
        self,
        pipeline: Any,
        detokenizer: Callable[[], Detokenizer | WindowDetokenizer],
        end_ids: frozenset[int],
        max_batch: int,
        name: str,
        rebuild: Callable[[Any], Any] | None = None,
        grammar_in_step: bool = False,
    ) -> None:
        self.pipeline = pipeline
        # After a step that raised: given the pipeline the step left unusable, a usable one (a new one, or the same
        # one reset); None: the engine ends instead.
        self._rebuild = rebuild
        # Whether the pipeline compiles a sequence's grammar inside its step (openvino): only then can a step that
        # raises be blamed on a schema (and not when the pipeline says it `lost` its process: a worker that died).
        self._grammar_in_step = grammar_in_step
        self.rebuilds = 0
        self.max_batch = max_batch  # sequences in the pipeline at once (its own max_num_seqs does not bound them)
        self._waiting: collections.deque[BatchSequence] = collections.deque()
        self._detokenizer = detokenizer  # a new one for each sequence
        self._end_ids = end_ids
        self._cond = threading.Condition()
        self._inbox: list[BatchSequence] = []
        self._active: dict[int, BatchSequence] = {}
        self._closing = False
        self._wake = False
        self._ids = itertools.count()
        self.steps = 0  # engine steps run (for tests and the benchmark)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        return len(self._active)

    def submit(self, seqs: Sequence[BatchSequence]) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the engine is closed")
            self._inbox.extend(seqs)
            self._cond.notify()

    def cancel(self, seqs: Sequence[BatchSequence]) -> None:
        """From the event loop: these sequences' client left; the engine frees them before its next step."""
        with self._cond:
            for seq in seqs:
                seq.cancelled = True
            self._wake = True
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the engine thread; whether it ended within `timeout` (only then may the pipeline be freed)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the engine thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            log.exception("the batching engine failed")
            with self._cond:
                self._closing = True
                pending, self._inbox = self._inbox, []
            for seq in [*pending, *self._waiting, *self._active.values()]:
                seq.fail(exc)
            self._active.clear()
            self._waiting.clear()
        finally:
            self._drain()

    def _loop(self) -> None:
        pipeline = self.pipeline
        while True:
            with self._cond:
                while not (self._inbox or self._active or self._waiting or self._closing or self._wake):
                    self._cond.wait()
                if self._closing:
                    return
                new, self._inbox = self._inbox, []
                self._wake = False
            for seq in [s for s in self._active.values() if s.cancelled]:
                self._retire(seq)
            self._waiting.extend(new)
            while self._waiting and len(self._active) < self.max_batch:
                seq = self._waiting.popleft()
                if seq.cancelled:
                    continue
                seq.detok = self._detokenizer()
                try:
                    seq.handle = pipeline.add_request(next(self._ids), seq.prompt, seq.config)
                except (RuntimeError, ValueError) as exc:
                    seq.fail(exc)
                    continue
                self._active[id(seq)] = seq
            if not pipeline.has_non_finished_requests():
                continue
            try:
                pipeline.step()
            except Exception as exc:
                if self._rebuild is None:
                    raise
                pipeline = self._recover(exc)
                continue
            self.steps += 1
            for seq in list(self._active.values()):
                self._read(seq)

    def _recover(self, exc: Exception) -> Any:
        """After a step that raised: its sequences end, and a new pipeline replaces the one the step left unusable."""
        seqs = list(self._active.values())
        self._active.clear()
        log.error("a step of the local model failed; %d sequences end and the pipeline is rebuilt: %s", len(seqs), exc)
        reason = clean_reason(exc)
        suspects = [seq for seq in seqs if seq.schema_param is not None and seq.generated == 0]
        if not self._grammar_in_step or getattr(self.pipeline, "lost", False):
            suspects = []  # the pipeline does not compile grammars in its step, or its process was lost
        for seq in seqs:
            if len(suspects) == 1 and seq is suspects[0]:
                message = f"The local model could not follow the JSON schema in '{seq.schema_param}': {reason}"
                seq.fail(InvalidRequestError(message, param=seq.schema_param))
            else:
                seq.fail(BadGatewayError(f"The local model failed in the middle of this answer ({reason}); retry it."))
        old, self.pipeline = self.pipeline, None  # None while it is rebuilt: the closer then has nothing to free
        assert self._rebuild is not None
        self.pipeline = self._rebuild(old)
        del old
        self.rebuilds += 1
        return self.pipeline

    def _read(self, seq: BatchSequence) -> None:
        handle = seq.handle
        while handle.can_read() and not seq.ended:
            for output in handle.read().values():
                # a float per token (openvino, llama_cpp_batched), or (float, alternatives) (llama_cpp_batched)
                logprobs = list(output.generated_log_probs) if seq.pending is not None else []
                for i, token in enumerate(output.generated_ids):
                    seq.take(int(token), logprobs[i] if i < len(logprobs) else 0.0, self._end_ids)
                    if seq.ended:
                        break
        if not seq.ended:
            status = handle.get_status().name
            if status == "FINISHED":
                seq.end("length" if seq.generated >= seq.max_tokens else "stop")
            elif status != "RUNNING":
                reason = getattr(handle, "failure", "") or f"the pipeline ended the sequence ({status.lower()})"
                seq.fail(RuntimeError(reason))
        if seq.ended:
            self._retire(seq)

    def _retire(self, seq: BatchSequence) -> None:
        """Out of the batch: cancelled in the pipeline (which frees its KV blocks at the next step)."""
        self._active.pop(id(seq), None)
        if seq.handle is not None and seq.handle.get_status().name == "RUNNING":
            seq.handle.cancel()
        seq.end("stop")  # a client that left reads nothing more; the others already ended

    def _drain(self) -> None:
        """At close: every sequence cancelled and the pipeline stepped until it holds none (so that it releases
        every KV block before it is destroyed)."""
        with self._cond:
            pending, self._inbox = self._inbox, []
        for seq in [*self._waiting, *pending]:
            seq.fail(RuntimeError("the server is shutting down"))
        self._waiting.clear()
        for seq in list(self._active.values()):
            if seq.handle is not None and seq.handle.get_status().name == "RUNNING":
                seq.handle.cancel()
            seq.fail(RuntimeError("the server is shutting down"))
        self._active.clear()
        try:
            for _ in range(1000):
                if not self.pipeline.has_non_finished_requests():
                    break
                self.pipeline.step()
        except Exception as exc:  # noqa: BLE001 - a pipeline a failed step left unusable: nothing to release
            log.warning("the local model's pipeline could not be drained at close: %s", exc)
