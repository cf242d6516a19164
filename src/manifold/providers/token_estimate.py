"""An estimate of a chat request's prompt tokens, for backends whose tokenizer is not known here.

Text is counted with the WordPiece tokenizer of the embedded embedding model (all-MiniLM-L6-v2's 30,522-token
vocabulary, shipped inside Manifold, run by `tokenizers` when the `[local]` extra is installed): an offline
subword tokenizer whose counts on English text stay close to those of the BPE tokenizers chat models use,
unlike word counts. Without `tokenizers` it falls back to OpenAI's rule of thumb of 4 characters per token.
Each message adds 3 tokens and the reply priming 3 more, as OpenAI's cookbook counts chat formatting; tool
definitions count as their JSON text. It is an estimate: the backend's own count can differ by tens of percent.
"""

from __future__ import annotations

import functools
from typing import Any

from manifold import _json

PER_MESSAGE = 3
REPLY_PRIMING = 3


@functools.cache
def _wordpiece() -> Any:
    try:
        from tokenizers import BertWordPieceTokenizer
    except ImportError:
        return None
    from manifold.providers.local.embedding import VOCAB

    return BertWordPieceTokenizer(str(VOCAB), lowercase=True)


def text_tokens(text: str) -> int:
    if not text:
        return 0
    tokenizer = _wordpiece()
    if tokenizer is None:
        return max(1, -(-len(text) // 4))
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict))
    return ""


def estimate_chat_tokens(body: dict[str, Any]) -> int:
    total = REPLY_PRIMING
    for message in body.get("messages") or ():
        total += PER_MESSAGE + text_tokens(str(message.get("role") or ""))
        total += text_tokens(_content_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            total += text_tokens(str(fn.get("name") or "")) + text_tokens(str(fn.get("arguments") or ""))
    if body.get("tools"):
        total += text_tokens(_json.dumps_text(body["tools"]))
    return total
