"""The batching engine's per-sequence text handling (providers/local/batching.py), fed token by token at hostile
points: characters split across tokens, stop sequences spanning tokens, and the limits that end a sequence; and the
engine's recovery from a step that raises (with fake pipelines, and the openvino engine's real one)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manifold.config import LocalDeployment
from manifold.errors import BadGatewayError, InvalidRequestError
from manifold.providers.local.batched_provider import CHAT_DEFAULTS, Ask
from manifold.providers.local.batching import BatchSequence, Detokenizer, Engine, Event, Outbox, WindowDetokenizer
from manifold.providers.local.openvino import _choices_regex, _pieces
from manifold.providers.registry import create_provider
from manifold.validation import deployment_problems

# Token id → bytes: a character split across tokens (é = c3 a9, 😀 = f0 9f 98 80), plain words, a byte that
# begins a character no later token completes (10), and a special token that decoding skips (11: empty bytes).
VOCAB = {1: b"H", 2: b"\xc3", 3: b"\xa9llo", 4: b" \xf0\x9f", 5: b"\x98", 6: b"\x80", 7: b" wor", 8: b"ld", 9: b"!"}
VOCAB |= {10: b" \xe6", 11: b""}
END = 0
PIECES = [VOCAB.get(i, b"") for i in range(12)]


def decode(ids: list[int]) -> str:
    """As OpenVINO's tokenizer decodes: bytes that do not form a character are left out."""
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", "ignore")


@pytest.mark.parametrize("make", [lambda: Detokenizer(PIECES), lambda: WindowDetokenizer(decode)])
def test_detokenizer_waits_for_a_characters_last_byte(make: Any) -> None:
    detok = make()
    pieces = [detok.feed(t) for t in (1, 2, 3, 4, 5, 6, 7, 8)]
    assert pieces == ["H", "", "éllo", " ", "", "😀", " wor", "ld"]
    assert detok.flush() == ""


@pytest.mark.parametrize(
    "tokens",
    [
        [1, 10, 7, 8],  # a character's first byte, then a word: the byte is dropped
        [1, 2, 11, 3],  # a special token between a character's two bytes
        [7, 4, 5],  # ends inside a character: flush drops its bytes
        [10, 10, 2, 2, 3, 4, 4, 5, 6, 12, 9],  # and a token id beyond the vocabulary: no text
    ],
)
def test_detokenized_pieces_join_to_what_the_tokenizer_decodes(tokens: list[int]) -> None:
    detok = Detokenizer(PIECES)
    text = "".join(detok.feed(t) for t in tokens) + detok.flush()
    assert text == decode([t for t in tokens if t in VOCAB])


class FakeTokenizer:
    """`decode` of a batch of token lists, as openvino_genai.Tokenizer's."""

    def __init__(self, texts: dict[int, str]) -> None:
        self.texts = texts

    def decode(self, batch: list[list[int]]) -> list[str]:
        return ["".join(self.texts[i] for i in ids) for ids in batch]


def test_the_byte_table_skips_special_tokens_and_is_refused_where_decode_is_not_the_bytes() -> None:
    byte_level = {0: b"<|end|>", 1: b"H", 2: b"\xc3", 3: b" w"}
    texts = {0: "", 1: "H", 2: "", 3: " w"}  # the special token decodes to nothing; a lone byte too
    assert _pieces(FakeTokenizer(texts), byte_level) == [b"", b"H", b"\xc3", b" w"]
    # SentencePiece: "▁" stands for a space and <0x0A> for a byte; decode writes neither as such
    sentencepiece = {0: b"</s>", 1: "▁the".encode(), 2: b"<0x0A>"}
    assert _pieces(FakeTokenizer({0: "", 1: " the", 2: "\n"}), sentencepiece) is None


async def run(tokens: list[int], stop: list[str], max_tokens: int = 100, logprobs: bool = False) -> list[Event]:
    outbox = Outbox()
    seq = BatchSequence(None, None, stop, max_tokens, 3, outbox, logprobs=logprobs)
    seq.detok = Detokenizer(PIECES)
    for token in tokens:
        seq.take(token, -0.5, frozenset({END}))
        if seq.ended:
            break
    seq.end("length")
    await asyncio.sleep(0)  # the events cross with call_soon_threadsafe
    events = []
    while not outbox.queue.empty():
        events.append(outbox.queue.get_nowait())
    return events


def texts(events: list[Event]) -> tuple[str, Any]:
    return "".join(e[2] for e in events if e[0] == "text"), [e[2] for e in events if e[0] == "end"]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["llo 😀 w"], ("Hé", [("stop", 7)])),  # spans five tokens, begins inside one
        (["ld!"], ("Héllo 😀 wor", [("stop", 9)])),
        (["\U0001f600"], ("Héllo ", [("stop", 6)])),  # a stop made of a character split across tokens
        (["nowhere"], ("Héllo 😀 world!", [("length", 9)])),
    ],
)
async def test_stop_sequences_across_tokens(stop: list[str], expected: tuple[str, Any]) -> None:
    assert texts(await run([1, 2, 3, 4, 5, 6, 7, 8, 9], stop)) == expected


async def test_end_of_sequence_and_max_tokens() -> None:
    assert texts(await run([1, 2, 3, END, 7], [])) == ("Héllo", [("stop", 3)])
    assert texts(await run([1, 2, 3, 7, 8], [], max_tokens=4)) == ("Héllo wor", [("length", 4)])
    # max_tokens reached inside a character: the incomplete bytes are dropped at the end, as the tokenizer does
    assert texts(await run([1, 2, 3, 4, 5], [], max_tokens=5)) == ("Héllo ", [("length", 5)])


async def test_logprobs_travel_with_the_text_they_produced() -> None:
    events = await run([1, 2, 3, 4, 5, 6], [], logprobs=True)
    pairs = [(e[0], e[2]) for e in events if e[0] in ("tokens", "text")]
    assert pairs == [
        ("tokens", [(1, -0.5)]),
        ("text", "H"),
        ("tokens", [(2, -0.5), (3, -0.5)]),
        ("text", "éllo"),
        ("tokens", [(4, -0.5)]),
        ("text", " "),
        ("tokens", [(5, -0.5), (6, -0.5)]),
        ("text", "😀"),
    ]


class SteppedHandle:
    """A generation handle of StepCounter: one planned token per step."""

    def __init__(self, plan: list[int]) -> None:
        self.plan = list(plan)
        self.ready: list[int] = []
        self.status = "RUNNING"

    def can_read(self) -> bool:
        return bool(self.ready)

    def read(self) -> dict[int, Any]:
        out, self.ready = self.ready, []
        return {0: SimpleNamespace(generated_ids=out, generated_log_probs=[0.0] * len(out))}

    def get_status(self) -> Any:
        return SimpleNamespace(name=self.status)

    def cancel(self) -> None:
        self.status = "DROPPED"


class StepCounter:
    """A pipeline whose every step gives each running sequence its next planned token."""

    def __init__(self) -> None:
        self.handles: list[SteppedHandle] = []

    def add_request(self, request_id: int, prompt: list[int], config: Any) -> SteppedHandle:
        handle = SteppedHandle(prompt)  # the prompt is the plan of tokens to generate
        self.handles.append(handle)
        return handle

    def has_non_finished_requests(self) -> bool:
        return any(h.status == "RUNNING" for h in self.handles)

    def step(self) -> None:
        time.sleep(0.001)  # as a real step, it takes a while (and leaves the GIL)
        for handle in self.handles:
            if handle.status == "RUNNING":
                handle.ready.append(handle.plan.pop(0))
                if not handle.plan:
                    handle.status = "FINISHED"


class Refusing(StepCounter):
    """A StepCounter that, as OpenVINO GenAI's pipeline does with a grammar it cannot compile, raises on the first
    step after a request whose config is "refuse" arrived, and on every step after it (it is unusable then)."""

    def __init__(self) -> None:
        super().__init__()
        self.poisoned = False

    def add_request(self, request_id: int, prompt: list[int], config: Any) -> SteppedHandle:
        self.poisoned = self.poisoned or config == "refuse"
        return super().add_request(request_id, prompt, config)

    def step(self) -> None:
        if self.poisoned:
            raise RuntimeError("[03:38:49] /home/ci/xgrammar/regex_converter.cc:75: Lookahead is not supported yet.\n")
        super().step()


async def test_a_step_that_raises_costs_its_batch_not_the_engine() -> None:
    pipelines = [Refusing(), StepCounter()]
    built = iter(pipelines[1:])
    engine = Engine(
        pipelines[0],
        lambda: Detokenizer(PIECES),
        frozenset({END}),
        4,
        "test-engine",
        rebuild=lambda old: next(built),
        grammar_in_step=True,
    )
    try:
        running, schema = Outbox(), Outbox()
        # long enough to be running still when the refused request joins (a step here takes a millisecond)
        engine.submit([BatchSequence([1, 7, 8, 9] * 2500, None, [], 100_000, 0, running)])
        assert (await asyncio.wait_for(running.queue.get(), 10))[0] == "text"  # it has a token: not a suspect
        suspect = BatchSequence([1, 7], "refuse", [], 100, 0, schema)
        suspect.schema_param = "response_format"
        engine.submit([suspect])
        while (event := await asyncio.wait_for(running.queue.get(), 10))[0] == "text":
            pass  # the steps it may have had before the refused request joined
        assert event[0] == "error" and isinstance(event[2], BadGatewayError), event
        assert "Lookahead is not supported yet." in event[2].message and ".cc:" not in event[2].message
        error = await asyncio.wait_for(schema.queue.get(), 10)
        assert error[0] == "error" and isinstance(error[2], InvalidRequestError)
        assert error[2].param == "response_format" and "/home" not in error[2].message
        after = Outbox()  # the new pipeline serves what comes next
        engine.submit([BatchSequence([1, 7, 8, 9], None, [], 100, 0, after)])
        got = []
        while (event := await asyncio.wait_for(after.queue.get(), 10))[0] != "end":
            got.append(event[2])
        assert "".join(got) == "H world!"
        assert engine.rebuilds == 1 and engine.pipeline is pipelines[1]
    finally:
        assert await asyncio.to_thread(engine.close)


class Lost(StepCounter):
    """A RemotePipeline whose worker was killed (the OOM killer) at the first step after a request joined: the step
    raises, and the pipeline says it lost its process."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def step(self) -> None:
        self.lost = True
        raise RuntimeError("the openvino worker process ended (signal SIGKILL)")


async def test_a_lost_worker_is_not_blamed_on_a_schema() -> None:
    engine = Engine(
        Lost(),
        lambda: Detokenizer(PIECES),
        frozenset({END}),
        4,
        "test-engine",
        rebuild=lambda old: StepCounter(),
        grammar_in_step=True,
    )
    try:
        outbox = Outbox()
        seq = BatchSequence([1, 7], "schema", [], 100, 0, outbox)
        seq.schema_param = "response_format"  # the only sequence with a schema, and no token yet
        engine.submit([seq])
        event = await asyncio.wait_for(outbox.queue.get(), 10)
        # a 502 the router may retry, not a 400 telling the client its schema was wrong
        assert event[0] == "error" and isinstance(event[2], BadGatewayError), event
        assert "signal SIGKILL" in event[2].message
    finally:
        assert await asyncio.to_thread(engine.close)


async def test_without_a_rebuild_a_step_that_raises_ends_the_engine() -> None:
    engine = Engine(Refusing(), lambda: Detokenizer(PIECES), frozenset({END}), 4, "test-engine")
    outbox = Outbox()
    engine.submit([BatchSequence([1, 7], "refuse", [], 100, 0, outbox)])
    event = await asyncio.wait_for(outbox.queue.get(), 10)
    assert event[0] == "error" and isinstance(event[2], RuntimeError)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([BatchSequence([1], None, [], 100, 0, Outbox())])
    assert await asyncio.to_thread(engine.close)


async def test_the_openvino_engine_rebuilds_its_pipeline_after_a_step_xgrammar_refused() -> None:
    # What the static check misses must cost one batch: a schema it would refuse, given to the real pipeline as an
    # unknown one would be.
    pytest.importorskip("openvino_genai", reason="the openvino engine needs: pip install 'manifold[openvino]'")
    provider: Any = create_provider(LocalDeployment(model_name="m", engine="openvino", threads=1))
    model = await asyncio.to_thread(provider.load, provider.packaged_model())
    try:
        prompt, _ = provider.chat_prompt(model, [{"role": "user", "content": "Say hello."}])
        body = {"temperature": 0}
        bad = provider.config(model, body, Ask(CHAT_DEFAULTS, 1.0, 8))
        bad["json_schema"] = json.dumps({"type": "string", "pattern": "^(?=a)a+$"})
        worker = model.engine.pipeline.pid
        refused = BatchSequence(prompt, bad, [], 8, 0, Outbox())
        refused.schema_param = "response_format"
        model.engine.submit([refused])
        event = await asyncio.wait_for(refused.outbox.queue.get(), 60)
        assert event[0] == "error" and isinstance(event[2], InvalidRequestError), event
        assert "Lookahead is not supported" in event[2].message and "jenkins" not in event[2].message
        fine = BatchSequence(prompt, provider.config(model, body, Ask(CHAT_DEFAULTS, 1.0, 8)), [], 8, 0, Outbox())
        model.engine.submit([fine])
        texts = []
        while (event := await asyncio.wait_for(fine.outbox.queue.get(), 60))[0] != "end":
            texts.append(event[2])
        assert "".join(texts).strip() and event[2][1] > 0
        assert model.engine.rebuilds == 1 and model.engine.pipeline.pid != worker  # a new worker process
    finally:
        await asyncio.to_thread(provider.closer(model))


async def test_a_config_the_worker_refuses_fails_its_sequence_and_the_worker_serves_on() -> None:
    pytest.importorskip("openvino_genai", reason="the openvino engine needs: pip install 'manifold[openvino]'")
    provider: Any = create_provider(LocalDeployment(model_name="m", engine="openvino", threads=1))
    model = await asyncio.to_thread(provider.load, provider.packaged_model())
    try:
        prompt, _ = provider.chat_prompt(model, [{"role": "user", "content": "Say hello."}])
        good = provider.config(model, {"temperature": 0}, Ask(CHAT_DEFAULTS, 1.0, 8))
        worker = model.engine.pipeline.pid
        refused = BatchSequence(prompt, {**good, "top_k": "many"}, [], 8, 0, Outbox())  # not an int
        model.engine.submit([refused])
        event = await asyncio.wait_for(refused.outbox.queue.get(), 60)
        assert event[0] == "error" and "TypeError" in str(event[2]), event
        fine = BatchSequence(prompt, good, [], 8, 0, Outbox())
        model.engine.submit([fine])
        while (event := await asyncio.wait_for(fine.outbox.queue.get(), 60))[0] != "end":
            assert event[0] == "text", event
        assert model.engine.rebuilds == 0 and model.engine.pipeline.pid == worker  # the same worker
    finally:
        await asyncio.to_thread(provider.closer(model))


def test_the_engine_picks_the_provider_and_its_model_path_may_be_an_ir_folder(tmp_path: Path) -> None:
    ov = LocalDeployment(model_name="m", engine="openvino", model_path=str(tmp_path))
    assert type(create_provider(ov)).__name__ == "OpenVinoModelProvider"
    assert type(create_provider(LocalDeployment(model_name="m"))).__name__ == "LocalModelProvider"
    assert deployment_problems(ov, "x") == [
        f"x.model_path: {str(tmp_path)!r} is neither a GGUF file nor an OpenVINO IR folder (with openvino_model.xml)"
    ]
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    assert deployment_problems(ov, "x") == []
    llama = LocalDeployment(model_name="m", model_path=str(tmp_path))
    assert deployment_problems(llama, "x") == [f"x.model_path: {str(tmp_path)!r} is not a file"]
    # The batch size is the router's concurrency limit unless max_concurrency says otherwise.
    assert create_provider(ov).concurrency_limit == 16
    assert create_provider(LocalDeployment(model_name="m", engine="openvino", max_batch=4)).concurrency_limit == 4
    limited = LocalDeployment(model_name="m", engine="openvino", max_batch=4, max_concurrency=2)
    assert create_provider(limited).concurrency_limit == 2
    assert create_provider(LocalDeployment(model_name="m")).concurrency_limit is None


@pytest.mark.local_model
def test_the_embedded_models_pieces_detokenize_as_its_tokenizer_decodes() -> None:
    """The byte table the engine detokenizes with (openvino._pieces) against the tokenizer's own `decode`, on the
    embedded model: text with split characters and special tokens, and random token ids from the whole vocabulary
    (bytes that form no character, specials anywhere)."""
    import random

    genai = pytest.importorskip("openvino_genai", reason="the openvino engine needs: pip install 'manifold[openvino]'")
    from manifold.providers.local.provider import embedded_model_path

    scheduler = genai.SchedulerConfig()
    scheduler.cache_size = 1
    tokenizer = genai.ContinuousBatchingPipeline(str(embedded_model_path()), scheduler, "CPU").get_tokenizer()
    token_bytes = {int(i): bytes(b) for b, i in tokenizer.get_vocab().items()}
    pieces = _pieces(tokenizer, token_bytes)
    assert pieces is not None  # byte-level BPE: the engine detokenizes with the table, not decode
    assert pieces[tokenizer.get_eos_token_id()] == b""  # a special token: decode skips it
    text = "<|im_start|>Héllo wörld, 😀 日本語<|im_end|>\n\n  the end"
    ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]
    assert any(not (b := token_bytes[t]) or not _utf8(b) for t in ids)  # the text has split characters
    rng = random.Random(15)
    samples = [ids] + [[rng.randrange(len(pieces)) for _ in range(rng.randrange(1, 40))] for _ in range(300)]
    for sample in samples:
        detok = Detokenizer(pieces)
        assert "".join(detok.feed(t) for t in sample) + detok.flush() == tokenizer.decode(sample), sample


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


NAMES = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12),
    min_size=1,
    max_size=5,
    unique=True,
)


@given(NAMES, st.booleans(), st.text(max_size=14))
def test_the_openvino_choice_regex_matches_exactly_its_choices(names: list[str], may_end: bool, other: str) -> None:
    """What a tool choice constrains the openvino engine to write: `functions.<name>:` (or `message:`), or, after a
    call, nothing at all: an optional group, since XGrammar refuses an empty alternative."""
    choices = [f"functions.{n}:" for n in names] + ([""] if may_end else [])
    regex = re.compile(_choices_regex(choices), re.DOTALL)
    assert all(regex.fullmatch(c) for c in choices)
    assert bool(regex.fullmatch("")) is may_end
    assert bool(regex.fullmatch(other)) is (other in choices)


@pytest.mark.parametrize("engine", ["openvino", "llama_cpp_batched"])
async def test_prefill_chunk_bounds_the_tokens_of_a_step(engine: str) -> None:
    """`prefill_chunk` reaches the pipeline: a prompt of N tokens takes N / chunk steps before its first token."""
    pytest.importorskip("openvino_genai" if engine == "openvino" else "llama_cpp")
    dep = LocalDeployment(model_name="m", engine=engine, threads=1, max_batch=2, context_length=512, prefill_chunk=16)
    provider: Any = create_provider(dep)
    model = await asyncio.to_thread(provider.load, provider.packaged_model())
    try:
        question = (
            "Tell me, in one word, which of these cities is the capital of France: Rome, Paris, Berlin or Madrid?"
        )
        prompt, count = provider.chat_prompt(model, [{"role": "user", "content": question}])
        assert count > 48
        seq = BatchSequence(
            prompt, provider.config(model, {"temperature": 0}, Ask(CHAT_DEFAULTS, 1.0, 2)), [], 2, 0, Outbox()
        )
        model.engine.submit([seq])
        while (event := await asyncio.wait_for(seq.outbox.queue.get(), 60))[0] != "end":
            assert event[0] == "text", event
        # ceil(count / 16) steps of prompt (the pipeline may spend one more on its last token), then one to decode
        assert model.engine.steps >= -(-count // 16) + 1, (model.engine.steps, count)
    finally:
        await asyncio.to_thread(provider.closer(model))


@pytest.mark.parametrize(("kv", "precision"), [("f16", "f16"), ("q8_0", "u8")])
async def test_the_openvino_kv_cache_type_reaches_the_worker(
    monkeypatch: pytest.MonkeyPatch, kv: str, precision: str
) -> None:
    """`kv_cache_type` becomes the CPU plugin's KV_CACHE_PRECISION in the worker, which loads with it and answers."""
    pytest.importorskip("openvino_genai", reason="the openvino engine needs: pip install 'manifold[openvino]'")
    from manifold.providers.local import openvino as engine
    from manifold.providers.local.openvino_worker import RemotePipeline

    specs: list[dict[str, Any]] = []

    def recorded(spec: dict[str, Any]) -> RemotePipeline:
        specs.append(spec)
        return RemotePipeline(spec)

    monkeypatch.setattr(engine, "RemotePipeline", recorded)
    provider: Any = create_provider(LocalDeployment(model_name="m", engine="openvino", threads=1, kv_cache_type=kv))
    model = await asyncio.to_thread(provider.load, provider.packaged_model())
    try:
        assert specs[0]["properties"] == {"INFERENCE_NUM_THREADS": 1, "KV_CACHE_PRECISION": precision}
        prompt, _ = provider.chat_prompt(model, [{"role": "user", "content": "Say hello."}])
        seq = BatchSequence(
            prompt, provider.config(model, {"temperature": 0}, Ask(CHAT_DEFAULTS, 1.0, 4)), [], 4, 0, Outbox()
        )
        model.engine.submit([seq])
        texts = []
        while (event := await asyncio.wait_for(seq.outbox.queue.get(), 60))[0] != "end":
            texts.append(event[2])
        assert "".join(texts).strip()
    finally:
        await asyncio.to_thread(provider.closer(model))
