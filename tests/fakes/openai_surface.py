"""The fake upstream's legacy completions, embeddings and image generation (see ``openai_upstream``).

Routes (the behavior comes from the ``/b/<behavior>/v1`` path, or a ``fake_behavior`` body field; on every
route ``status:<code>`` answers that error and ``hang`` never answers, until the client goes away)
------------------------------------------------------------------------------------------------
``POST {anything}/completions``
    ``echo`` (default): one ``text_completion`` choice per prompt and ``n`` (``index = prompt * n + i``),
    text ``"echo: " + prompt`` (a token prompt reads ``tokens 1 2 3``), followed by ``" [suffix]"`` when a
    ``suffix`` was sent; ``echo: true`` prepends the prompt.  ``logprobs: k`` gives per-word ``tokens``,
    ``token_logprobs``, ``text_offset`` and ``k`` ``top_logprobs`` entries (with ``echo``, the prompt's words
    come first and the first has a ``null`` logprob, as at OpenAI).  Stream: one chunk per word per choice with
    ``finish_reason: null``, then a chunk with ``finish_reason: "stop"``; with ``stream_options.include_usage`` a
    last chunk with ``choices: []`` and ``usage``; then ``data: [DONE]``.
    ``json_for_stream`` ignores ``stream``; ``status:<code>`` answers that error; any other behavior is echo.
``POST {anything}/embeddings``
    ``echo`` (default): a deterministic vector per input (``dimensions`` long, default 16; every value a
    multiple of 1/256, exact in float32), as floats or, with ``encoding_format: "base64"``, little-endian
    float32 in base64.  ``floats_only`` always answers floats (an upstream that ignores the format).
    ``usage.prompt_tokens`` = words (or token ids) in all inputs.  ``status:<code>`` answers that error.
``POST {anything}/images/generations``
    An ``ImagesResponse`` shaped by the received ``model``: ``dall-e-*`` give ``url`` images
    (``https://images.invalid/fake/<i>.png``) or ``b64_json`` with ``response_format: "b64_json"``, and
    ``dall-e-3`` a ``revised_prompt``; any other model gives ``b64_json`` plus ``size``, ``quality``,
    ``background``, ``output_format`` and ``usage`` as the GPT image models do.  ``status:<code>`` answers that
    error.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import sys
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.openai_upstream import _Exchange

ROUTES = ("completions", "embeddings", "images/generations")
DEFAULT_DIMENSIONS = 16
PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def route_of(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return None
    for route in ROUTES:
        if path.endswith("/" + route):
            return route
    return None


async def answer(route: str, ex: _Exchange) -> web.StreamResponse:
    from tests.fakes.openai_upstream import HANG_SECONDS, _error_body, _parse_status

    name, _, arg = ex.record.behavior.partition("@")[0].partition(":")  # `@tag`: see openai_upstream
    if name == "hang":
        await asyncio.sleep(HANG_SECONDS)
    if name == "status":
        code = _parse_status(arg)
        return web.json_response(_error_body(f"fake {code}", "fake_error", f"fake_{code}"), status=code)
    if route == "completions":
        return await _completions(ex, force_json=name == "json_for_stream")
    if route == "embeddings":
        return web.json_response(_embeddings(ex.body, floats_only=name == "floats_only"))
    return web.json_response(_images(ex.body, ex.created))


# -- legacy completions ------------------------------------------------------------------------------------------


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if prompt is None:
        return [""]
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return ["tokens " + " ".join(map(str, prompt))]
    return [p if isinstance(p, str) else "tokens " + " ".join(map(str, p)) for p in prompt]


def _words(text: str) -> list[str]:
    """Words with their leading space, so that ``"".join(words) == text``."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return [w for w in out if w]


def _logprobs(prompt_words: list[str], words: list[str], k: int, echo: bool) -> dict[str, Any]:
    tokens, values, tops, offsets = [], [], [], []
    offset = 0
    if echo:
        for i, word in enumerate(prompt_words):
            tokens.append(word)
            values.append(None if i == 0 else -0.5)
            tops.append(None if i == 0 else {word: -0.5})
            offsets.append(offset)
            offset += len(word)
    for i, word in enumerate(words):
        tokens.append(word)
        values.append(-0.25 * (i + 1))
        tops.append({word if j == 0 else f"{word}#{j}": -0.25 * (i + 1) - j for j in range(k)})
        offsets.append(offset)
        offset += len(word)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _choices(body: dict[str, Any], n: int) -> list[tuple[int, str, str, list[str]]]:
    """(index, prompt, generated text, generated words) of every choice."""
    suffix = body.get("suffix")
    out = []
    for p, prompt in enumerate(_prompts(body)):
        generated = "echo: " + prompt + (f" [{suffix}]" if isinstance(suffix, str) else "")
        for i in range(n):
            out.append((p * n + i, prompt, generated, _words(generated)))
    return out


def _usage(body: dict[str, Any], n: int) -> dict[str, int]:
    prompts = _prompts(body)
    prompt = sum(len(p.split()) for p in prompts)
    completion = sum(len(c[2].split()) for c in _choices(body, n))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _completions(ex: _Exchange, *, force_json: bool) -> web.StreamResponse:
    body = ex.body
    echo = body.get("echo") is True
    k = body.get("logprobs")
    base = {"id": ex.id.replace("chatcmpl-", "cmpl-"), "object": "text_completion", "created": ex.created}
    base["model"] = ex.model
    if not ex.wants_stream or force_json:
        choices = []
        for index, prompt, text, words in _choices(body, ex.n):
            lp = _logprobs(_words(prompt), words, k, echo) if isinstance(k, int) else None
            choices.append(
                {"text": (prompt if echo else "") + text, "index": index, "logprobs": lp, "finish_reason": "stop"}
            )
        return web.json_response({**base, "choices": choices, "usage": _usage(body, ex.n)})
    for index, prompt, _text, words in _choices(body, ex.n):
        pieces = ([prompt] if echo and prompt else []) + words
        for position, piece in enumerate(pieces):
            lp = None
            if isinstance(k, int):
                is_prompt = echo and prompt and position == 0
                lp = _logprobs(_words(prompt), [], k, True) if is_prompt else _logprobs([], [piece], k, False)
            choice = {"text": piece, "index": index, "logprobs": lp, "finish_reason": None}
            await ex.send({**base, "choices": [choice]})
        await ex.send({**base, "choices": [{"text": "", "index": index, "logprobs": None, "finish_reason": "stop"}]})
    if ex.include_usage:
        await ex.send({**base, "choices": [], "usage": _usage(body, ex.n)})
    return await ex.done()


# -- embeddings ----------------------------------------------------------------------------------------------------


def vector_for(item: Any, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The fake's embedding of one input: values in [-0.5, 0.5), multiples of 1/256 (exact in float32)."""
    seed = item if isinstance(item, str) else ",".join(map(str, item))
    raw = b""
    counter = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(f"{counter}:{seed}".encode()).digest()
        counter += 1
    return [(b - 128) / 256 for b in raw[:dimensions]]


def to_base64(vector: list[float]) -> str:
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _embeddings(body: dict[str, Any], *, floats_only: bool) -> dict[str, Any]:
    value = body.get("input")
    if isinstance(value, str):
        inputs: list[Any] = [value]
    elif isinstance(value, list) and value and isinstance(value[0], int):
        inputs = [value]
    else:
        inputs = list(value) if isinstance(value, list) else []
    dims = body.get("dimensions")
    dims = dims if isinstance(dims, int) and dims > 0 else DEFAULT_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64" and not floats_only
    data = []
    for i, item in enumerate(inputs):
        vector = vector_for(item, dims)
        data.append({"object": "embedding", "index": i, "embedding": to_base64(vector) if as_base64 else vector})
    tokens = sum(len(x.split()) if isinstance(x, str) else len(x) for x in inputs)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# -- images ----------------------------------------------------------------------------------------------------------


def _images(body: dict[str, Any], created: int) -> dict[str, Any]:
    model = str(body.get("model") or "dall-e-2")
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    if model.startswith("dall-e"):
        images: list[dict[str, Any]] = []
        for i in range(n):
            image: dict[str, Any] = (
                {"b64_json": PNG_1X1}
                if body.get("response_format") == "b64_json"
                else {"url": f"https://images.invalid/fake/{i}.png"}
            )
            if model.startswith("dall-e-3"):
                image["revised_prompt"] = "revised: " + str(body.get("prompt"))
            images.append(image)
        return {"created": created, "data": images}
    words = len(str(body.get("prompt", "")).split())
    return {
        "created": created,
        "data": [{"b64_json": PNG_1X1} for _ in range(n)],
        "background": "transparent" if body.get("background") == "transparent" else "opaque",
        "output_format": body.get("output_format") or "png",
        "size": body.get("size") if body.get("size") in ("1024x1536", "1536x1024") else "1024x1024",
        "quality": body.get("quality") if body.get("quality") in ("low", "medium") else "high",
        "usage": {
            "total_tokens": words + 272 * n,
            "input_tokens": words,
            "output_tokens": 272 * n,
            "input_tokens_details": {"text_tokens": words, "image_tokens": 0},
        },
    }
