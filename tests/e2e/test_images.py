"""Image generation (`POST /images/generations`) through a real `manifold serve`, driven by the official `openai`
SDK against the fake upstream; the per-family rules OpenAI documents are checked before anything is sent."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.test_errors import check_envelope
from tests.fakes.openai_upstream import FakeUpstream


def last_body(fake: FakeUpstream) -> Any:
    return [r for r in fake.requests if r.path.endswith("/images/generations")][-1].body


def test_gpt_image(client: openai.OpenAI, http: httpx.Client, fake: FakeUpstream) -> None:
    fake.clear()
    sent: dict[str, Any] = {
        "n": 2,
        "size": "1536x1024",
        "quality": "medium",
        "output_format": "webp",
        "output_compression": 80,
        "background": "transparent",
        "moderation": "low",
        "user": "u-1",
    }
    result = client.images.generate(model="gpt-image-1", prompt="an otter", **sent)
    assert result.data is not None and len(result.data) == 2
    assert all(d.b64_json and d.url is None for d in result.data)
    assert result.size == "1536x1024" and result.output_format == "webp" and result.background == "transparent"
    assert result.usage is not None and result.usage.input_tokens == 2
    assert last_body(fake) == {"model": "gpt-image-1", "prompt": "an otter", **sent}
    raw = http.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "an otter"}).json()
    assert_valid("ImagesResponse", raw)


def test_dall_e_3_through_an_alias(client: openai.OpenAI, http: httpx.Client, fake: FakeUpstream) -> None:
    fake.clear()
    result = client.images.generate(
        model="my-images", prompt="a fox", size="1792x1024", quality="hd", style="natural", response_format="url"
    )
    assert result.data is not None and result.data[0].url == "https://images.invalid/fake/0.png"
    assert result.data[0].revised_prompt == "revised: a fox"
    assert last_body(fake)["model"] == "dall-e-3"  # the alias is mapped; its family rules applied
    raw = http.post("/v1/images/generations", json={"model": "my-images", "prompt": "a fox"}).json()
    assert_valid("ImagesResponse", raw)
    assert "b64_json" not in raw["data"][0]


def test_dall_e_2_b64_json(client: openai.OpenAI) -> None:
    result = client.images.generate(model="dall-e-2", prompt="a cat", n=3, size="256x256", response_format="b64_json")
    assert result.data is not None and [bool(d.b64_json) for d in result.data] == [True] * 3


def test_model_defaults_to_dall_e_2(http: httpx.Client, fake: FakeUpstream) -> None:
    fake.clear()
    resp = http.post("/v1/images/generations", json={"prompt": "a dog"})
    assert resp.status_code == 200, resp.text
    assert last_body(fake)["model"] == "dall-e-2"
    assert_valid("ImagesResponse", resp.json())


def test_gpt_image_2_takes_arbitrary_sizes(client: openai.OpenAI) -> None:
    result = client.images.generate(model="gpt-image-2", prompt="a bird", size="1536x864")  # type: ignore[arg-type]
    assert result.data is not None and result.data[0].b64_json


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "dall-e-2"}, "prompt"),
        ({"model": "dall-e-2", "prompt": ""}, "prompt"),
        ({"model": "dall-e-2", "prompt": "x" * 1001}, "prompt"),
        ({"model": "dall-e-3", "prompt": "x" * 4001}, "prompt"),
        ({"model": "dall-e-2", "prompt": "p", "n": 11}, "n"),
        ({"model": "dall-e-3", "prompt": "p", "n": 2}, "n"),
        ({"model": "dall-e-2", "prompt": "p", "size": "1792x1024"}, "size"),
        ({"model": "dall-e-3", "prompt": "p", "size": "512x512"}, "size"),
        ({"model": "gpt-image-1", "prompt": "p", "size": "256x256"}, "size"),
        ({"model": "gpt-image-2", "prompt": "p", "size": "1000x1000"}, "size"),
        ({"model": "gpt-image-2", "prompt": "p", "size": "3840x640"}, "size"),
        ({"model": "gpt-image-2", "prompt": "p", "size": "4096x2304"}, "size"),
        ({"model": "dall-e-2", "prompt": "p", "quality": "hd"}, "quality"),
        ({"model": "gpt-image-1", "prompt": "p", "quality": "standard"}, "quality"),
        ({"model": "dall-e-3", "prompt": "p", "quality": "ultra"}, "quality"),
        ({"model": "gpt-image-1", "prompt": "p", "response_format": "url"}, "response_format"),
        ({"model": "dall-e-2", "prompt": "p", "response_format": "png"}, "response_format"),
        ({"model": "dall-e-2", "prompt": "p", "style": "vivid"}, "style"),
        ({"model": "gpt-image-1", "prompt": "p", "style": "natural"}, "style"),
        ({"model": "dall-e-3", "prompt": "p", "output_format": "png"}, "output_format"),
        ({"model": "dall-e-3", "prompt": "p", "background": "opaque"}, "background"),
        ({"model": "dall-e-2", "prompt": "p", "moderation": "low"}, "moderation"),
        ({"model": "gpt-image-1", "prompt": "p", "output_compression": 50}, "output_compression"),
        (
            {"model": "gpt-image-1", "prompt": "p", "output_format": "jpeg", "output_compression": 101},
            "output_compression",
        ),
        ({"model": "gpt-image-1", "prompt": "p", "output_format": "jpeg", "background": "transparent"}, "background"),
        ({"model": "gpt-image-1", "prompt": "p", "partial_images": 2}, "partial_images"),
        ({"model": "gpt-image-1", "prompt": "p", "stream": True}, "stream"),
        ({"model": "gpt-image-1", "prompt": "p", "user": 1}, "user"),
    ],
)
def test_family_rules_name_the_parameter(
    http: httpx.Client, fake: FakeUpstream, body: dict[str, Any], param: str
) -> None:
    fake.clear()
    check_envelope(http.post("/v1/images/generations", json=body), 400, param)
    assert not fake.requests


def test_models_lists_every_new_model(client: openai.OpenAI) -> None:
    models = {m.id: m.owned_by for m in client.models.list()}
    for name in ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-2"):
        assert models[name] == "openai"
    assert models["my-images"] == "openai"  # owned_by defaults to the provider kind
    assert {"fake-chat-only", "fake-floats_only"} <= set(models)
