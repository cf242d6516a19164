"""What every backend provides, and the per-request value handed to it."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from typing import Any, ClassVar, TypeVar

from manifold.config import DeploymentBase
from manifold.errors import UnsupportedError


class Capability(enum.Enum):
    CHAT = "chat"
    STREAM = "stream"
    TOOLS = "tools"
    VISION = "vision"
    EMBEDDINGS = "embeddings"
    IMAGES = "images"
    COMPLETIONS = "completions"
    RESPONSES = "responses"


class Call:
    """One request on its way to a backend (chat, completions, embeddings, images, …).

    `body` is the client's JSON object exactly as received; providers never mutate it (a retry re-runs them),
    they copy what they send.
    """

    __slots__ = ("body", "public_model", "request_id", "route", "stream", "upstream_model")

    def __init__(self, body: dict[str, Any], public_model: str, request_id: str, stream: bool) -> None:
        self.body = body
        self.public_model = public_model
        self.request_id = request_id
        self.stream = stream
        # Set by the router for wildcard groups (`openai/*`): the upstream model this request names.
        self.upstream_model: str | None = None
        # The client's `METHOD /path` when it differs from this call's own operation (the Responses API and
        # legacy completions answered through chat), so that errors name the route the client called.
        self.route: str | None = None


ChunkStream = AsyncIterator[dict[str, Any]]
_D = TypeVar("_D", bound=DeploymentBase)


def of_kind(deployment: DeploymentBase, kind: type[_D]) -> _D:
    """`deployment` as its kind's Struct: what a backend's `check` gets is any deployment, and the registry
    hands each backend only its own kind, so anything else is a programming error."""
    if not isinstance(deployment, kind):
        raise TypeError(f"a {kind.__name__} was expected, not a {type(deployment).__name__}")
    return deployment


class Provider:
    """Base of every backend. Subclasses override what they support and declare it in `capabilities`."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    # Each backend narrows this to its own kind's Struct (config.py: `OpenAIDeployment`, `LocalDeployment`, …).
    deployment: DeploymentBase

    def __init__(self, deployment: DeploymentBase) -> None:
        self.deployment = deployment

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        """Config problems of this deployment, as `field: problem` (`manifold.validation` calls it)."""
        return []

    async def start(self) -> None:
        """Open pools, load models. Called once per process, inside the event loop."""

    async def aclose(self) -> None:
        """Release everything `start` acquired."""

    async def ready(self) -> bool:
        return True

    async def chat(self, call: Call) -> dict[str, Any]:
        """A complete `chat.completion` as a dict (normalized by the caller)."""
        raise unsupported_model(call, "chat completions")

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        """Start a streamed completion. Errors before the first chunk are raised here, so the server can still
        answer with a proper status; the returned iterator yields `chat.completion.chunk` dicts."""
        raise unsupported_model(call, "streamed chat completions")

    async def completions(self, call: Call) -> dict[str, Any]:
        """A complete `text_completion` as a dict (normalized by the caller). A backend that chats but does not
        serve legacy completions answers through chat (`completions_via_chat`)."""
        if Capability.CHAT in self.capabilities:
            from manifold.providers import completions_via_chat

            return await completions_via_chat.complete(self, call)
        raise unsupported_model(call, "legacy completions")

    async def open_completions_stream(self, call: Call) -> ChunkStream:
        """Start a streamed legacy completion; the iterator yields `text_completion` chunk dicts."""
        if Capability.CHAT in self.capabilities and Capability.STREAM in self.capabilities:
            from manifold.providers import completions_via_chat

            return await completions_via_chat.open_stream(self, call)
        raise unsupported_model(call, "streamed legacy completions")

    async def embeddings(self, call: Call) -> dict[str, Any]:
        """A `CreateEmbeddingResponse` as a dict; vectors as float arrays or base64 strings (the caller converts
        them to the encoding the client asked for)."""
        raise unsupported_model(call, "embeddings")

    async def images(self, call: Call) -> dict[str, Any]:
        """An `ImagesResponse` as a dict (image generation)."""
        raise unsupported_model(call, "image generation")

    async def count_chat_tokens(self, call: Call) -> int | None:
        """The exact number of prompt tokens the chat request in `call.body` would cost, where this backend's
        tokenizer is known here; None otherwise (the caller then estimates)."""
        return None

    @property
    def context_window(self) -> int | None:
        """The backend's context length in tokens, where it is known here (None: unknown)."""
        return None

    @property
    def concurrency_limit(self) -> int | None:
        """The most requests the router lets in at once (more wait in the deployment's queue, then 429): the
        deployment's `max_concurrency`, or a backend's own bound (a batching engine's batch size)."""
        return self.deployment.max_concurrency

    @property
    def native_responses(self) -> bool:
        """Whether `POST /responses` goes to the upstream's own Responses API (deployment `responses: native`)."""
        return self.deployment.responses == "native" and Capability.RESPONSES in self.capabilities

    async def responses(self, call: Call) -> dict[str, Any]:
        """A `Response` from the upstream's own Responses API (native pass-through)."""
        raise unsupported_model(call, "the native Responses API")

    async def open_responses_stream(self, call: Call) -> ChunkStream:
        """Start a native Responses stream; the iterator yields its events (dicts with `type`)."""
        raise unsupported_model(call, "the native Responses API")


def unsupported_model(call: Call, what: str) -> UnsupportedError:
    """The 400 for asking a backend what it cannot do: names the model, never crashes."""
    return UnsupportedError(
        f"The model '{call.public_model}' does not support {what}.", param="model", code="unsupported_model"
    )
