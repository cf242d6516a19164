"""The llama.cpp batching pipeline (providers/local/llama_batch.py) on the embedded model, in process: sequences
decoded together give their lone outputs, prefixes are reused from a slot's own cache or copied from another
slot's, a grammar is applied only to the tokens it rejects, and per-sequence sampling holds in a batch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold.errors import BadGatewayError
from manifold.providers.local.batching import BatchSequence, Detokenizer, Engine, Outbox
from manifold.providers.local.gbnf import choices_grammar, schema_gbnf
from manifold.providers.local.llama_batch import Handle, LlamaBatchPipeline, Sampling, Status, _common

pytest.importorskip("llama_cpp", reason="the llama.cpp engines need: pip install 'manifold[local]'")
pytestmark = pytest.mark.local_model

GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def pipeline() -> Iterator[LlamaBatchPipeline]:
    from manifold.providers.local.provider import embedded_model_path

    p = LlamaBatchPipeline(str(embedded_model_path()), n_seq=4, n_ctx_seq=512, threads=1)
    yield p
    p.close()


def chat(p: LlamaBatchPipeline, question: str) -> list[int]:
    text = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return p.tokenize(text, add_bos=False)


def run(p: LlamaBatchPipeline, prompts: list[list[int]], sampling: Sampling = GREEDY, n: int = 24) -> list[list[int]]:
    """Each prompt's first `n` tokens (fewer where it ended), the prompts decoded together."""
    handles = [p.add_request(i, prompt, sampling) for i, prompt in enumerate(prompts)]
    return drain(p, handles, n)


def drain(p: LlamaBatchPipeline, handles: list[Handle], n: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in handles]
    while p.has_non_finished_requests():
        p.step()
        for i, h in enumerate(handles):
            if h.can_read():
                out[i] += h.read()[0].generated_ids
            if h.get_status() is Status.RUNNING and len(out[i]) >= n:
                h.cancel()
    return [o[:n] for o in out]


def text(p: LlamaBatchPipeline, tokens: list[int]) -> str:
    return p.model.detokenize(tokens).decode("utf-8", "replace")  # type: ignore[no-any-return, no-untyped-call]


def test_batched_greedy_equals_lone(pipeline: LlamaBatchPipeline) -> None:
    prompts = [chat(pipeline, q) for q in ("What is 2 + 2?", "Name a color.", "Say hi in French.", "What is ice?")]
    alone = [run(pipeline, [p])[0] for p in prompts]
    together = run(pipeline, prompts)
    assert together == alone
    assert all(len(t) > 0 for t in together)


def test_a_finished_prompt_is_reused_by_the_next_one(pipeline: LlamaBatchPipeline) -> None:
    prompt = chat(pipeline, f"Tell me about tea. [{time.time()}]")
    first = run(pipeline, [prompt])[0]
    handle = pipeline.add_request(0, prompt, GREEDY)
    assert handle.reused == len(prompt) - 1  # all but the last token, decoded again for its logits
    assert drain(pipeline, [handle], 24)[0] == first


def test_a_longer_prefix_is_copied_from_another_slot(pipeline: LlamaBatchPipeline) -> None:
    system = (
        "<|im_start|>system\n" + "You answer about the sea, briefly and kindly. " * 6 + f"{time.time()}<|im_end|>\n"
    )
    ask = [system + f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in ("Why is it salty?", "Hi!")]
    first, second = (pipeline.tokenize(a, add_bos=False) for a in ask)
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)

    def clear() -> None:
        for slot in pipeline._slots:
            pipeline._lib.llama_memory_seq_rm(pipeline.memory, slot.index, 0, -1)
            slot.tokens.clear()

    # The reference: `second` continuing from the shared prefix as `first` computed it, in `first`'s own slot (a
    # prefix computed inside another prompt's batch may differ in its last bits from one computed cold).
    clear()
    done = pipeline.add_request(0, first, GREEDY)
    drain(pipeline, [done], 1)
    copied = pipeline.copied
    own = pipeline.add_request(1, second, GREEDY)
    assert own.slot is done.slot and own.reused == shared and pipeline.copied == copied
    reference = drain(pipeline, [own], 24)[0]
    # Now `first` is still running in its slot: `second` gets another slot, with the prefix copied into it.
    clear()
    running = pipeline.add_request(0, first, GREEDY)
    while running.next_token < 0:
        pipeline.step()
    handle = pipeline.add_request(1, second, GREEDY)
    assert pipeline.copied == copied + 1 and handle.slot is not running.slot and handle.reused == shared
    assert drain(pipeline, [running, handle], 24)[1] == reference


def test_a_grammar_is_applied_only_to_tokens_it_rejects(pipeline: LlamaBatchPipeline) -> None:
    grammar = 'root ::= "{" ws "\\"answer\\":" ws ("\\"yes\\"" | "\\"no\\"") ws "}"\nws ::= [ ]?'
    assert pipeline.grammar_ok(grammar) and not pipeline.grammar_ok("root ::= (")
    tests, redraws = pipeline.grammar_tests, pipeline.redraws
    sampled = Sampling(temperature=0.8, seed=7, grammar=grammar)
    prompt = chat(pipeline, "Is the sea salty? Answer in JSON.")
    out = run(pipeline, [prompt, chat(pipeline, "What is 2 + 2?")], sampled, n=40)
    answer = json.loads(text(pipeline, out[0]))
    assert answer["answer"] in ("yes", "no")
    judged, rejected = pipeline.grammar_tests - tests, pipeline.redraws - redraws
    assert judged == len(out[0]) + len(out[1])  # every token, the end of sequence included
    assert 0 < rejected < judged  # some were drawn again; not every one was


def test_seeded_sampling_repeats_inside_a_batch(pipeline: LlamaBatchPipeline) -> None:
    prompts = [chat(pipeline, "Write a line about rain."), chat(pipeline, "Write a line about snow.")]
    seeded = Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    alone = run(pipeline, [prompts[0]], seeded)[0]
    beside = run(pipeline, prompts, seeded)[0]
    assert beside == alone
    other = run(pipeline, [prompts[0]], Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=99))[0]
    assert other != alone


def test_logit_bias_and_top_logprobs(pipeline: LlamaBatchPipeline) -> None:
    comma = pipeline.tokenize(",", add_bos=False)[0]
    handle = pipeline.add_request(0, chat(pipeline, "Hi"), Sampling(temperature=0, logit_bias={comma: 100.0}))
    assert drain(pipeline, [handle], 5)[0] == [comma] * 5
    handle = pipeline.add_request(0, chat(pipeline, "Hi"), Sampling(temperature=0, top_logprobs=3))
    pipeline.step()
    out = handle.read()[0]
    (chosen, top), token = out.generated_log_probs[0], out.generated_ids[0]
    assert top[0][0] == token and top[0][1] == chosen <= 0
    assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
    handle.cancel()


def test_a_cancelled_sequence_frees_its_slot_at_once(pipeline: LlamaBatchPipeline) -> None:
    handles = [pipeline.add_request(i, chat(pipeline, f"Count to {i + 3}."), GREEDY) for i in range(4)]
    with pytest.raises(RuntimeError):
        pipeline.add_request(9, chat(pipeline, "One more?"), GREEDY)
    pipeline.step()
    handles[2].cancel()
    assert handles[2].get_status() is Status.CANCELLED
    extra = pipeline.add_request(9, chat(pipeline, "One more?"), GREEDY)
    assert extra.slot is handles[2].slot
    drain(pipeline, [*handles[:2], handles[3], extra], 4)
    assert not pipeline.has_non_finished_requests()


@given(st.lists(st.integers(0, 3), max_size=40), st.lists(st.integers(0, 3), max_size=40))
def test_common_prefix_length(a: list[int], b: list[int]) -> None:
    expected = 0
    while expected < min(len(a), len(b)) and a[expected] == b[expected]:
        expected += 1
    assert _common(a, b) == expected
    assert _common(a, a + b) == len(a)


NAMES = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=64)


@settings(max_examples=40, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=5), st.booleans(), st.text(max_size=12))
def test_tool_choice_grammars_parse(pipeline: LlamaBatchPipeline, names: list[str], end: bool, odd: str) -> None:
    """The constrained choice between `message:`, `functions.<name>:` for any function name OpenAI allows, the
    end of an answer (""), and text with quotes, backslashes or control characters: llama.cpp parses each, and
    what the model writes under it is one of them."""
    choices = [f"functions.{n}:" for n in names] + ([""] if end else ["message:"]) + [odd or "x"]
    grammar = choices_grammar(choices)
    assert pipeline.grammar_ok(grammar)
    handle = pipeline.add_request(0, chat(pipeline, "Pick one."), Sampling(temperature=0, grammar=grammar))
    out = drain(pipeline, [handle], 200)[0]
    if handle.get_status() is Status.FAILED:  # a dead end of llama.cpp's grammar (the next test): failed, not crashed
        assert "allows no token" in handle.failure
        return
    assert text(pipeline, [t for t in out if t not in pipeline.eog]) in choices


def test_a_grammar_that_allows_no_next_token_fails_its_sequence_not_the_process(pipeline: LlamaBatchPipeline) -> None:
    """llama.cpp's grammars cannot begin some 4-byte UTF-8 characters a token at a time: after `T硆\\x89°` this
    choice allows no token. Accepting one anyway aborted the whole process (found by the test above); now the
    sequence fails with the reason (a 502 for its request) and the others go on."""
    choices = ["functions.Oz:", "message:", "T硆\x89°\U000833ba\U0008c4b7¤\U000a04f1`k"]
    grammar = choices_grammar(choices)
    stuck = pipeline.add_request(0, chat(pipeline, "Pick one."), Sampling(temperature=0, grammar=grammar))
    beside = pipeline.add_request(1, chat(pipeline, "What is 2 + 2?"), GREEDY)
    out = drain(pipeline, [stuck, beside], 16)
    assert stuck.get_status() is Status.FAILED
    assert stuck.failure == "its output grammar allows no token the model can write after 8 tokens"
    assert len(out[1]) == 16 or out[1][-1] in pipeline.eog


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=10), st.text(max_size=6), st.booleans())
def test_a_schema_constant_is_written_as_its_json(
    pipeline: LlamaBatchPipeline, value: str, key: str, const: bool
) -> None:
    """An `enum` or `const` value and a property name with any characters (quotes, backslashes, control
    characters, characters outside the Basic Multilingual Plane): the grammar from the schema makes the model write
    JSON that reads back as exactly that object. llama-cpp-python's own converter escaped only quotes and line
    breaks, so a backslash became a JSON escape, a quote ended the GBNF string, a tab was written raw and an emoji
    could never be written; and the property "" was given the grammar's root rule (providers/local/gbnf.py)."""
    schema = {"type": "object", "properties": {key: {"const": value} if const else {"enum": [value]}}}
    schema["required"] = [key]
    grammar = schema_gbnf(schema)
    assert pipeline.grammar_ok(grammar)
    handle = pipeline.add_request(0, chat(pipeline, "Answer in JSON."), Sampling(temperature=0, grammar=grammar))
    out = drain(pipeline, [handle], 120)[0]
    assert handle.get_status() is not Status.FAILED, handle.failure
    assert json.loads(text(pipeline, [t for t in out if t not in pipeline.eog])) == {key: value}


def test_token_pieces_join_into_the_text(pipeline: LlamaBatchPipeline) -> None:
    """The byte table the engine detokenizes with: a text's tokens' pieces join into its bytes (no padding from
    llama-cpp-python's buffer), and control tokens are empty."""
    pieces = pipeline.pieces()
    assert len(pieces) == pipeline.n_vocab
    text = "Héllo, wörld! 😀 — naïve café\n\ttabs"
    tokens = pipeline.tokenize(text, add_bos=False, special=False)
    assert b"".join(pieces[t] for t in tokens) == text.encode()
    assert all(pieces[t] == b"" for t in pipeline.eog)


class _DecodeFailsOnce:
    """llama.cpp's functions, but `llama_decode` answers 1 ("no KV slot") once while armed."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        if self.armed:
            self.armed = False
            return 1
        return int(self._lib.llama_decode(ctx, batch))


async def test_a_failed_decode_costs_its_batch_and_the_engine_serves_on(pipeline: LlamaBatchPipeline) -> None:
    question = chat(pipeline, "What is the capital of France?")
    [alone] = run(pipeline.reset(), [question], n=12)  # from an empty cache, as after the reset below
    lib = _DecodeFailsOnce(pipeline._lib)
    pipeline._lib = lib
    engine = Engine(
        pipeline,
        partial(Detokenizer, pipeline.pieces()),
        pipeline.eog,
        4,
        "test-llama",
        rebuild=LlamaBatchPipeline.reset,
    )
    try:
        running = Outbox()
        engine.submit([BatchSequence(chat(pipeline, "Tell me a long story."), GREEDY, [], 400, 0, running)])
        assert (await asyncio.wait_for(running.queue.get(), 30))[0] == "text"
        lib.armed = True  # the next step's llama_decode fails
        while (event := await asyncio.wait_for(running.queue.get(), 30))[0] == "text":
            pass
        # A 502 (the router retries a request that had sent nothing), not a 400: llama.cpp's grammars are checked
        # before the step, so a schema is never blamed.
        assert event[0] == "error" and isinstance(event[2], BadGatewayError), event
        assert "llama_decode failed (1)" in event[2].message
        # The same pipeline, reset, serves what comes next: a greedy answer equal to its lone run before.
        after = Outbox()
        fresh = BatchSequence(question, GREEDY, [], 12, 0, after)
        engine.submit([fresh])
        texts = []
        while (event := await asyncio.wait_for(after.queue.get(), 30))[0] == "text":
            texts.append(event[2])
        assert event[0] == "end", event
        assert "".join(texts) == text(pipeline, alone)
        assert fresh.handle.reused == 0  # the reset emptied every slot's cache: nothing is reused from before it
        assert engine.rebuilds == 1 and engine.pipeline is pipeline and not lib.armed  # reset, not replaced
    finally:
        assert await asyncio.to_thread(engine.close)
        pipeline._lib = lib._lib
    assert not any(slot.busy for slot in pipeline._slots) and not pipeline.has_non_finished_requests()


@pytest.fixture(scope="module")
def library_llama() -> Iterator[Any]:
    import llama_cpp

    from manifold.providers.local.provider import embedded_model_path

    llm = llama_cpp.Llama(str(embedded_model_path()), n_ctx=512, n_threads=1, verbose=False)
    yield llm
    llm.close()


TEXTS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", " ", "<|im_start|>user", "def add(a, b):", "\n", "  indented", "☺ smile"]
)


@settings(max_examples=40, deadline=None)
@given(prompt=TEXTS | st.lists(st.integers(3, 49151), min_size=1, max_size=12), suffix=TEXTS)
def test_a_suffix_prompt_is_the_one_llama_cpp_python_evaluates(
    pipeline: LlamaBatchPipeline, library_llama: Any, prompt: str | list[int], suffix: str
) -> None:
    """llama_cpp_batched's layout of a legacy prompt with a `suffix` equals, token for token, what llama-cpp-python
    (the llama_cpp engine) evaluates for it."""
    from types import SimpleNamespace

    from manifold.providers.local.llama_batched import _infill_prompt

    ours, count = _infill_prompt(SimpleNamespace(pipeline=pipeline), prompt, suffix)  # type: ignore[arg-type]
    library_llama.reset()
    library_llama.create_completion(prompt=prompt, suffix=suffix, max_tokens=1, temperature=0)
    assert ours == library_llama.input_ids[: library_llama.n_tokens].tolist() and count == len(ours)


def test_a_q8_0_kv_cache_holds_a_sequence_in_about_half_the_bytes(pipeline: LlamaBatchPipeline) -> None:
    from manifold.providers.local.provider import embedded_model_path

    q8 = LlamaBatchPipeline(str(embedded_model_path()), n_seq=2, n_ctx_seq=512, threads=1, kv_cache_type="q8_0")
    try:
        prompt = chat(pipeline, "Describe the planet Jupiter in a few words.")
        sizes = []
        for p in (pipeline.reset(), q8):
            [out] = run(p, [prompt], n=8)
            assert text(p, out).strip()  # it still answers
            slot = next(s for s in p._slots if s.tokens)  # the one slot the run used
            sizes.append(p._lib.llama_state_seq_get_size(p.ctx, slot.index))
        f16, q8_0 = sizes
        assert 0.4 * f16 < q8_0 < 0.6 * f16, sizes  # q8_0: 34 bytes a 32 values, f16: 64
    finally:
        q8.close()
