"""`provider: python`: a Python handler behind the router, like any other backend.

    - model_name: my-model
      provider: python
      handler: my_package.serving:answer     # a function, or an object/class with operation methods

The handler answers the hub's operations (chat, and legacy completions, embeddings, images when it implements
them); the gateway does the rest (validation, ids, SSE, storage, the Responses API through chat). See
docs/frontend.md.
"""

from __future__ import annotations

from typing import Any, ClassVar

from manifold.api.operations import BY_NAME
from manifold.config import DeploymentBase, PythonDeployment
from manifold.providers.base import Call, Capability, ChunkStream, Provider, of_kind, unsupported_model
from manifold.providers.python_handler import contracts, loading, streams
from manifold.providers.python_handler.calling import CHAT, RESPONSE, Handler, is_stream, iterate
from manifold.providers.python_handler.context import CURRENT_REQUEST

_CAPABILITIES = {Capability.CHAT, Capability.STREAM, Capability.COMPLETIONS, Capability.EMBEDDINGS}


class PythonHandlerProvider(Provider):
    capabilities: ClassVar[frozenset[Capability]] = frozenset({*_CAPABILITIES, Capability.IMAGES})

    deployment: PythonDeployment

    def __init__(self, deployment: PythonDeployment, handler: Any = None, *, include_url_info: bool = False) -> None:
        super().__init__(deployment)
        if handler is None:
            if deployment.handler is None:
                raise ValueError("a python deployment needs `handler`")
            handler = loading.resolve(deployment.handler)
        self.handler = Handler(handler, include_url_info=include_url_info, label=deployment.handler)

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, PythonDeployment)
        if not deployment.handler:
            return ["handler: required for provider 'python' (e.g. handler: my_package.serving:answer)"]
        try:
            obj = loading.resolve(deployment.handler)
        except loading.HandlerNotFound as exc:
            return [f"handler: {exc}"]
        except ImportError as exc:
            return [f"handler: importing it failed: {exc}"]
        if not callable(obj) and not any(callable(getattr(obj, name, None)) for name in BY_NAME):
            return [f"handler: {deployment.handler!r} is neither callable nor an object with operation methods"]
        return []

    # -- calling --------------------------------------------------------------------------------------------------

    def _what(self, operation: str, call: Call) -> str:
        info = CURRENT_REQUEST.get()
        if info is None:  # behind a plain gateway: the route is the operation's own, unless the call says
            if call.route is not None:
                return f"{call.route} (as {operation})"
            op = BY_NAME[operation]
            return f"{op.method} {op.path}"
        route = f"{info.method} {info.path}"
        # The Responses API and legacy completions reach a handler through its chat answer.
        return route if info.operation == operation else f"{route} (as {operation})"

    async def _answer(self, operation: str, call: Call, extra: dict[str, Any] | None = None) -> Any:
        """The handler's answer (NotImplemented when it declines); a non-2xx `Response` is raised as is."""
        info = CURRENT_REQUEST.get()
        # `create_response` gets the client's Responses fields; every other operation the call's own body.
        body = info.body if operation == RESPONSE and info is not None else call.body
        kwargs = self.handler.arguments(BY_NAME[operation], body, info, extra)
        return contracts.unwrapped(await self.handler.call(operation, kwargs, self._what(operation, call)))

    # -- chat, and the Responses API through it -------------------------------------------------------------------

    async def _chat_answer(self, call: Call, what: str) -> tuple[str, Any]:
        """(operation, answer) for a chat call. Inside `POST /responses` (the engine answers it through chat), a
        handler with `create_response` (or a dispatcher) answers from the Responses fields, plus `messages`:
        the conversation Manifold assembled (instructions, the `previous_response_id` chain, the input)."""
        info = CURRENT_REQUEST.get()
        if info is not None and info.operation == RESPONSE and self.handler.implements(RESPONSE):
            result = await self._answer(RESPONSE, call, {"messages": call.body.get("messages")})
            if result is not NotImplemented:
                return RESPONSE, result
        if not self.handler.implements(CHAT):
            raise unsupported_model(call, what)
        result = await self._answer(CHAT, call)
        if result is NotImplemented:
            raise unsupported_model(call, what)
        return CHAT, result

    async def chat(self, call: Call) -> dict[str, Any]:
        operation, result = await self._chat_answer(call, "chat completions")
        what = self._what(operation, call)
        if is_stream(result):
            return await streams.collect_chat(iterate(result, self.handler.label, what), what)
        if operation == RESPONSE:
            return contracts.chat_from_response(result, what)
        return contracts.chat_completion(result, what)

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        operation, result = await self._chat_answer(call, "streamed chat completions")
        what = self._what(operation, call)
        if is_stream(result):
            return streams.chat_chunks(iterate(result, self.handler.label, what), what)
        if operation == RESPONSE:
            return streams.completion_as_chunks(contracts.chat_from_response(result, what))
        return streams.answer_as_chunks(result, what)

    # -- legacy completions: the handler's own, else through its chat answer ---------------------------------------

    async def _own_completion(self, call: Call) -> tuple[str, Any] | None:
        """(what, answer) from the handler's own `create_completion`; None when it has none or declines."""
        operation = "create_completion"
        if not self.handler.implements(operation):
            return None
        what = self._what(operation, call)
        result = await self._answer(operation, call)
        return None if result is NotImplemented else (what, result)

    async def completions(self, call: Call) -> dict[str, Any]:
        own = await self._own_completion(call)
        if own is not None:
            what, result = own
            if is_stream(result):
                return await streams.collect_text(iterate(result, self.handler.label, what), what)
            return contracts.text_completion(result, what)
        if not self.handler.implements(CHAT):
            raise unsupported_model(call, "legacy completions")
        return await super().completions(call)

    async def open_completions_stream(self, call: Call) -> ChunkStream:
        own = await self._own_completion(call)
        if own is not None:
            what, result = own
            if is_stream(result):
                return streams.text_chunks(iterate(result, self.handler.label, what), what)
            return streams.text_as_chunks(contracts.text_completion(result, what))
        if not self.handler.implements(CHAT):
            raise unsupported_model(call, "streamed legacy completions")
        return await super().open_completions_stream(call)

    # -- embeddings, images ---------------------------------------------------------------------------------------

    async def embeddings(self, call: Call) -> dict[str, Any]:
        result = await self._only("create_embedding", call, "embeddings")
        return contracts.embeddings(result, self._what("create_embedding", call))

    async def images(self, call: Call) -> dict[str, Any]:
        result = await self._only("create_image", call, "image generation")
        return contracts.images(result, self._what("create_image", call))

    async def _only(self, operation: str, call: Call, what: str) -> Any:
        if not self.handler.implements(operation):
            raise unsupported_model(call, what)
        result = await self._answer(operation, call)
        if result is NotImplemented:
            raise unsupported_model(call, what)
        if is_stream(result):
            raise contracts.contract_error(self._what(operation, call), "is a stream; this route answers at once")
        return result
