"""Chat templates for generate endpoints: a conversation rendered into the one `text_input` string.

A deployment names a built-in template (`chatml`) or gives Jinja source in the Hugging Face
`tokenizer_config.json` style (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`).
Templates run in Jinja's immutable sandbox, like `transformers` runs them.
"""

from __future__ import annotations

from typing import Any

from manifold.errors import InvalidRequestError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN = {"chatml": CHATML}


class TemplateRejected(Exception):
    """The template called `raise_exception` (e.g. "roles must alternate")."""


def _raise(message: str) -> None:
    raise TemplateRejected(message)


class ChatTemplate:
    def __init__(self, name_or_source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = BUILTIN.get(name_or_source, name_or_source)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(self.source)
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[dict[str, Any]], public_model: str) -> str:
        import jinja2

        try:
            return self._template.render(messages=messages, add_generation_prompt=True, **self._tokens)
        except TemplateRejected as exc:
            raise InvalidRequestError(
                f"The chat template of model '{public_model}' rejected the conversation: {exc}", param="messages"
            ) from None
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(
                f"The chat template of model '{public_model}' failed on this conversation: {exc}", param="messages"
            ) from None


def template_problem(name_or_source: str) -> str | None:
    """Why a template cannot be used (a syntax error), for config checks."""
    import jinja2

    if "{" not in name_or_source and name_or_source not in BUILTIN:
        return f"{name_or_source!r} is not a built-in template ({', '.join(sorted(BUILTIN))}) nor Jinja source"
    try:
        ChatTemplate(name_or_source)
    except jinja2.TemplateSyntaxError as exc:
        return f"not a valid Jinja template (line {exc.lineno}): {exc.message}"
    return None
