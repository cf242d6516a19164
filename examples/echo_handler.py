"""A chat model in a dozen lines that the official `openai` SDK can call, streamed or not:

    manifold serve --handler examples.echo_handler:answer

Stored completions (`store=True`, then list/retrieve/update/delete) and the Responses API come with it.
"""

from collections.abc import Iterator


def answer(messages: list[dict], model: str, **kwargs: object) -> Iterator[str]:
    """Echo the last message, word by word: the gateway streams the words, or joins them into one answer."""
    content = messages[-1].get("content") or ""
    if isinstance(content, list):  # content parts: keep the text ones
        content = " ".join(part.get("text", "") for part in content)
    for i, word in enumerate(f"{model} heard: {content}".split()):
        yield word if i == 0 else " " + word
