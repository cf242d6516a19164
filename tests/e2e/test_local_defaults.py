"""The embedded model's first-run bounds (issue 17): a stream always ends. SmolLM2-135M repeats itself, so a
local deployment has a default output limit (`default_max_tokens`, 512) and a repeat penalty (1.1); and bytes
that never form a UTF-8 character no longer stall a stream until the context window is full."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.e2e.responses_helpers import typed_events

pytestmark = pytest.mark.local_model

# SmolLM2's token whose bytes are 0xF0 alone: the lead byte of a 4-byte character, never completed when forced.
LEAD_BYTE_TOKEN = "187"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    config = {
        "model_list": [
            {"model_name": "smollm2", "provider": "local"},
            {"model_name": "smollm2-short", "provider": "local", "default_max_tokens": 3, "repeat_penalty": 1.3},
        ]
    }
    proc = ManifoldProcess(config, Path(tmp_path_factory.mktemp("local-defaults")))
    yield proc
    proc.stop()


@pytest.fixture
def sdk(local: ManifoldProcess) -> Iterator[openai.OpenAI]:
    # A bounded client: the old code ran these streams to the end of the 4096-token context.
    with openai.OpenAI(base_url=local.base_url, api_key="none", max_retries=0, timeout=60) as c:
        yield c


def test_a_stream_of_bytes_that_never_form_a_character_still_ends(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=6,
        logit_bias={LEAD_BYTE_TOKEN: 100},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "\ufffd" * 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    # The same prompt unstreamed: the stream's prompt count is the prompt's, not the KV cache's length.
    reply = sdk.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello"}], max_tokens=1
    )
    assert reply.usage is not None and reply.usage.prompt_tokens == chunks[-1].usage.prompt_tokens


def test_a_deployment_default_output_limit_applies_when_the_client_sets_none(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="smollm2-short", messages=[{"role": "user", "content": "Write a long story about a dragon."}]
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    # The client's own limit wins.
    reply = sdk.chat.completions.create(
        model="smollm2-short", messages=[{"role": "user", "content": "Write a long story."}], max_tokens=5
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_the_readme_stream_ends_without_max_tokens(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Count to five"}], stream=True, temperature=1.0
    )
    finishes = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])


def test_a_responses_stream_without_a_limit_completes(local: ManifoldProcess) -> None:
    body = {"model": "smollm2", "input": "Say hello", "stream": True, "temperature": 1.0}
    with httpx.Client(timeout=60) as http:
        text = http.post(local.base_url + "/responses", json=body).text
    events = typed_events(text)
    assert events[-1]["type"] == "response.completed" or events[-1]["type"] == "response.incomplete"
    usage = events[-1]["response"]["usage"]
    assert 0 < usage["output_tokens"] <= 512
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == events[-1]["response"]["output"][0]["content"][0]["text"], json.dumps(events[-1])[:500]


def test_a_legacy_completion_stream_of_lead_bytes_still_ends(sdk: openai.OpenAI) -> None:
    stream = sdk.completions.create(
        model="smollm2", prompt="Stars:", max_tokens=5, logit_bias={LEAD_BYTE_TOKEN: 100}, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "\ufffd" * 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    reply = sdk.completions.create(model="smollm2", prompt="Stars:", max_tokens=5, logit_bias={LEAD_BYTE_TOKEN: 100})
    assert reply.choices[0].text == "\ufffd" * 5
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_llamas_own_loop_is_bounded_too(sdk: openai.OpenAI) -> None:
    """With `logprobs` the answer comes from llama-cpp-python's own loop, whose streaming detokenizer stalls on a
    lead byte and then skips its `max_tokens` test: Manifold's token counter stops it at the limit all the same."""
    stream = sdk.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=6,
        logit_bias={LEAD_BYTE_TOKEN: 100},
        logprobs=True,
        stream=True,
        timeout=30,
    )
    chunks = list(stream)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
