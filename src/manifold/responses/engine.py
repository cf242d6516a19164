"""The Responses engine: one `POST /responses` on top of any chat backend (the hub), with stored state, chains,
background jobs, compaction and token counts.

A request is prepared once (`prepare`: its input items normalized, the chain of `previous_response_id` read back,
the backend picked), then answered in one of three ways that share one builder (`events.ResponseBuilder`):
at once (`respond`), as a stream of events (`open_stream`), or in a background task whose events a client can
follow and resume (`start_background`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from manifold.api.chat_response import ChunkShaper, normalize_completion
from manifold.api.response_request import (
    CompactRequest,
    CreateResponseRequest,
    FunctionTool,
    TokenCountRequest,
    check_translatable,
    function_tools,
    input_items,
    mcp_tools,
    new_id,
)
from manifold.config import ResponsesSettings
from manifold.errors import InvalidRequestError, ManifoldError, NotFoundError, RateLimitError, UnsupportedError
from manifold.mcp.chat import add_usage
from manifold.providers.base import Call, Provider
from manifold.providers.token_estimate import estimate_chat_tokens
from manifold.responses import translate
from manifold.responses.events import TERMINAL_EVENTS, ResponseBuilder, completion_chunks, replay
from manifold.responses.jobs import Job, Jobs
from manifold.responses.mcp_run import McpRun, McpSplit, resolve
from manifold.responses.objects import now, skeleton
from manifold.routing.router import Report, Router
from manifold.storage import Store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from manifold.mcp.manager import McpManager
    from manifold.responses.compaction import CompactionSeal
    from manifold.storage.stored_responses import ResponseStore

log = logging.getLogger("manifold.responses")
UNFINISHED = ("queued", "in_progress")
LOST_MESSAGE = (
    "The server stopped (a restart or a crash) before this background response finished; it was not completed."
)
SHUTDOWN_MESSAGE = "The server shut down before this background response finished."
MAX_CHAIN = 10_000


class Prepared(NamedTuple):
    req: CreateResponseRequest
    provider: Provider
    items: list[dict[str, Any]]  # this request's own input items (stored, listed by input_items)
    context: list[dict[str, Any]]  # what the model sees: the chain's items, then `items`
    tools: list[FunctionTool]
    request_id: str
    report: Report | None = None  # gets the headers naming the deployment that answered (not for background)
    route: str = "POST /responses"  # the client's, for errors from a backend that answers it through chat
    mcp: McpRun | None = None  # the request's `mcp` tools (or approvals), run by the engine's tool loop


def _error_code(exc: ManifoldError) -> str:
    return "rate_limit_exceeded" if isinstance(exc, RateLimitError) else "server_error"


class ResponsesEngine:
    def __init__(
        self, router: Router, store: Store, settings: ResponsesSettings, mcp: McpManager | None = None
    ) -> None:
        self.router = router
        self.mcp = mcp
        self.store = store
        self.settings = settings
        self._seal: CompactionSeal | None = None
        self.jobs = Jobs(settings.stream_buffer_events, settings.stream_retention_s)
        self.owner = "mf_" + os.urandom(12).hex()  # this process, as the holder of background leases
        self._maintenance: asyncio.Task[None] | None = None
        self._shutting_down = False

    @property
    def seal(self) -> CompactionSeal:
        """The compaction seal, made on first use (`cryptography` is imported only then)."""
        if self._seal is None:
            from manifold.responses.compaction import CompactionSeal

            self._seal = CompactionSeal(self.settings.compaction_key)
        return self._seal

    def _expand(self, encrypted_content: str, param: str) -> str:
        return self.seal.open(encrypted_content, param)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def aclose(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        self._shutting_down = True
        running = self.jobs.running()
        for job in running:
            assert job.task is not None
            job.task.cancel()
        if running:
            await asyncio.wait([job.task for job in running if job.task is not None], timeout=10)
        # The store's writer finishes every queued write (those of clients that left, too) when it closes.

    async def _maintain(self) -> None:
        """Renew the leases of the background responses this process runs; fail those whose process is gone;
        stop those another process cancelled."""
        interval = self.settings.background_lease_s / 3
        while True:
            await asyncio.sleep(interval)
            if not self.store.is_open:
                continue  # nothing stored yet, or the database is down (whatever stores reports that)
            try:
                store = await self.store.responses()
                running = {job.response_id: job for job in self.jobs.running()}
                if running:
                    alive = await store.renew_leases(self.owner, list(running), self._lease_until())
                    for response_id in set(running) - alive:
                        task = running[response_id].task
                        if task is not None:
                            task.cancel()  # cancelled (or failed) by another process: stop the upstream work
                for response in await store.expired():
                    if self.jobs.get(response["id"]) is None:
                        await self._fail_lost(store, response)
            except ManifoldError as exc:
                log.warning("responses: background maintenance failed: %s", exc.message)
            except Exception:  # logged, not hidden: a dead loop would let other processes fail our responses
                log.exception("responses: background maintenance failed")

    def _lease_until(self) -> int:
        return int((time.time() + self.settings.background_lease_s) * 1000)

    async def _fail_lost(self, store: ResponseStore, response: dict[str, Any]) -> dict[str, Any] | None:
        failed = {**response, "status": "failed", "error": {"code": "server_error", "message": LOST_MESSAGE}}
        if await store.fail_if_expired(failed):
            log.warning("responses: background response %s lost its process; marked failed", response["id"])
            return failed
        return None

    # -- preparing a request ---------------------------------------------------------------------------------

    async def prepare(
        self,
        req: CreateResponseRequest,
        request_id: str,
        report: Report | None = None,
        route: str = "POST /responses",
    ) -> Prepared:
        check_translatable(req)
        provider = self.router.pick(req.model)
        tools = function_tools(req.tools)
        own = input_items(req.input)
        history = await self.chain(req.previous_response_id)
        context = translate.context_after_compaction([*history, *own])
        run = await resolve(self.mcp, mcp_tools(req.tools), history, own, {t.name for t in tools})
        return Prepared(req, provider, own, context, tools, request_id, report, route, run)

    def _skeleton(self, p: Prepared, status: str) -> dict[str, Any]:
        response = skeleton(p.req, p.tools, status)
        if p.mcp is not None:
            response["tools"].extend(p.mcp.echo)
        return response

    async def chain(self, previous_response_id: str | None) -> list[dict[str, Any]]:
        """The items of a chain of stored responses, oldest first: each response's input items, then its output."""
        if previous_response_id is None:
            return []
        store = await self.store.responses()
        links = await store.chain(previous_response_id, MAX_CHAIN)
        if not links:
            raise NotFoundError(
                f"Previous response with id '{previous_response_id}' not found.", param="previous_response_id"
            )
        newest = links[0].stored.response
        if newest.get("status") in UNFINISHED:
            raise InvalidRequestError(
                f"Previous response with id '{previous_response_id}' is still {newest['status']}; "
                "wait for it to finish.",
                param="previous_response_id",
                code="invalid_value",
            )
        # An older link that was deleted ends the walk: the chain starts after it.
        parts = [[*link.input_items, *(link.stored.response.get("output") or [])] for link in links]
        return [item for part in reversed(parts) for item in part]

    def messages(self, instructions: str | None, context: list[dict[str, Any]], own_count: int) -> list[dict[str, Any]]:
        """Chat messages for a context whose last `own_count` items are the request's own `input`."""
        history = len(context) - own_count
        params = [f"previous_response_id (item {i})" for i in range(history)]
        params += [f"input[{i}]" for i in range(own_count)]
        return [
            *translate.instruction_messages(instructions),
            *translate.items_to_messages(context, self._expand, params),
        ]

    # -- answering -------------------------------------------------------------------------------------------

    async def respond(self, p: Prepared) -> dict[str, Any]:
        """A non-streamed, non-background response."""
        builder = ResponseBuilder(self._skeleton(p, "in_progress"))
        if p.mcp is not None:
            async for event in self._mcp_events(p, builder, stream=False):
                if event["type"] in TERMINAL_EVENTS and p.req.store is not False:
                    store = await self.store.responses()
                    await store.save(builder.response, p.items, p.request_id)
            return builder.response
        compaction, messages = await self._compact_if_needed(p)
        chunks = await self._open(p, messages, stream=False)
        async for _ in self._run(p, builder, compaction, chunks):
            pass
        return builder.response

    async def open_stream(self, p: Prepared) -> AsyncIterator[dict[str, Any]]:
        """A streamed, non-background response: the upstream is opened before this returns (its errors become
        HTTP errors); the iterator yields the events."""
        builder = ResponseBuilder(self._skeleton(p, "in_progress"))

        async def save() -> None:
            store = await self.store.responses()
            await store.save(builder.response, p.items, p.request_id)

        if p.mcp is not None:
            return _GeneratedEvents(
                builder, self._mcp_events(p, builder, stream=True), save if p.req.store is not False else None
            )
        compaction, messages = await self._compact_if_needed(p)
        chunks = await self._open(p, messages, stream=True)
        return _ResponseEvents(builder, compaction, chunks, save if p.req.store is not False else None)

    async def _mcp_events(
        self, p: Prepared, builder: ResponseBuilder, *, stream: bool
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a response with `mcp` tools (after `response.in_progress`): the tool lists, then turns of
        the model, each running the MCP calls it made, until it answers (or asks for an approval, or calls a
        function of the client's). At most `mcp.max_tool_rounds` turns are offered the MCP tools; the one after
        them is not, so that a model that keeps calling tools still answers."""
        run = p.mcp
        assert run is not None
        max_rounds = self.mcp.settings.max_tool_rounds if self.mcp is not None else 8
        usage: dict[str, Any] | None = None
        try:
            compaction, messages = await self._compact_if_needed(p)
            if compaction is not None:
                for event in builder.add_item(compaction):
                    yield event
            for item in run.list_items:
                for event in run.list_events(builder, item):
                    yield event
            for request, answer in run.approvals:
                function = run.functions[translate.mcp_function_name(request["server_label"], request["name"])]
                call = {"id": request["id"], "type": "function"}
                call["function"] = {
                    "name": translate.mcp_function_name(request["server_label"], request["name"]),
                    "arguments": request["arguments"],
                }
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                if answer["approve"]:
                    item = run.call_item(function, request["arguments"], approval_request_id=request["id"])
                    for event in run.call_started(builder, item):
                        yield event
                    result = await run.run_call(function, item)
                    for event in run.call_finished(builder, item):
                        yield event
                else:
                    reason = answer.get("reason")
                    result = "The user did not approve this tool call" + (f": {reason}" if reason else ".")
                messages.append({"role": "tool", "tool_call_id": request["id"], "content": result})
            limit = p.req.max_tool_calls  # MCP calls this response may run (None: no limit but the rounds')
            made = len([a for a in run.approvals if a[1]["approve"]])
            for round_ in range(max_rounds + 1):
                room = limit is None or made < limit
                offered = run.function_tools() if round_ < max_rounds and room else []
                chunks = await self._open(p, messages, stream=stream, tools=[*p.tools, *offered])
                split = McpSplit(run.functions, run.labels)
                try:
                    async for chunk in chunks:
                        rest = split.take(chunk)
                        if rest is not None:
                            for event in builder.feed(rest):
                                yield event
                finally:
                    await _aclose(chunks)
                usage = add_usage(usage, split.usage)
                calls = split.mcp_calls()
                if not calls:
                    break
                for event in builder.settle():
                    yield event
                messages.append(split.assistant_message())
                waiting = split.client_calls()
                for call in calls:
                    offered_function = run.functions.get(call["name"])
                    if offered_function is None:  # a tool of the request's servers that was not offered
                        refused = run.refused_item(call["name"], call["arguments"])
                        for event in run.call_started(builder, refused):
                            yield event
                        for event in run.call_finished(builder, refused):
                            yield event
                        text = "Error: " + refused["error"]["message"]
                        messages.append({"role": "tool", "tool_call_id": call["id"], "content": text})
                        continue
                    function = offered_function
                    if function.approval:
                        request = {
                            "type": "mcp_approval_request",
                            "id": new_id("mcpr_"),
                            "server_label": function.server.label,
                            "name": function.tool.name,
                            "arguments": call["arguments"],
                        }
                        for event in builder.add_item(request):
                            yield event
                        waiting = True
                        continue
                    if limit is not None and made >= limit:
                        result = f"Error: not run: this response may make at most {limit} tool calls (max_tool_calls)."
                        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
                        continue
                    made += 1
                    item = run.call_item(function, call["arguments"])
                    for event in run.call_started(builder, item):
                        yield event
                    result = await run.run_call(function, item)
                    for event in run.call_finished(builder, item):
                        yield event
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
                if waiting:
                    break
            builder.usage = usage
            final = builder.finish()
        except ManifoldError as exc:
            log.warning("response %s failed: %s", builder.response["id"], exc.message)
            final = builder.fail(_error_code(exc), exc.message)
        finally:
            await run.aclose()
        for event in final:
            yield event

    async def _run(
        self,
        p: Prepared,
        builder: ResponseBuilder,
        compaction: dict[str, Any] | None,
        chunks: AsyncIterator[dict[str, Any]],
    ) -> AsyncIterator[dict[str, Any]]:
        """`_generate`, storing the response (when asked) before the terminal event is sent."""
        async for event in self._generate(builder, compaction, chunks):
            if event["type"] in TERMINAL_EVENTS and p.req.store is not False:
                store = await self.store.responses()
                await store.save(builder.response, p.items, p.request_id)
            yield event

    async def _generate(
        self,
        builder: ResponseBuilder,
        compaction: dict[str, Any] | None,
        chunks: AsyncIterator[dict[str, Any]],
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a response built from upstream chunks; an upstream failure ends it as failed."""
        try:
            if compaction is not None:
                for event in builder.add_item(compaction):
                    yield event
            async for chunk in chunks:
                for event in builder.feed(chunk):
                    yield event
            final = builder.finish()
        except ManifoldError as exc:
            log.warning("response %s failed: %s", builder.response["id"], exc.message)
            final = builder.fail(_error_code(exc), exc.message)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        for event in final:
            yield event

    async def _open(
        self,
        p: Prepared,
        messages: list[dict[str, Any]],
        *,
        stream: bool,
        tools: Sequence[FunctionTool] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        body = translate.to_chat_body(p.req, messages, p.tools if tools is None else tools, stream=stream)
        call = Call(body, p.req.model, p.request_id, stream)
        call.route = p.route
        if not stream:
            completion = normalize_completion(await self.router.chat(call, p.report), p.req.model)
            return _Listed(list(completion_chunks(completion)))
        upstream = await self.router.open_chat_stream(call, p.report)
        return _Shaped(upstream, ChunkShaper(p.req.model, include_usage=True))

    # -- native pass-through (deployment `responses: native`) ---------------------------------------------------

    def runs_mcp(self, req: CreateResponseRequest) -> bool:
        """Whether the engine runs the request's `mcp` tools itself (a configured label, or an approval to
        answer), even for a model an upstream's own Responses API serves: that upstream cannot reach them."""
        for tool in req.tools or ():
            if isinstance(tool, dict) and tool.get("type") == "mcp" and "server_url" not in tool:
                return True
        items = req.input if isinstance(req.input, list) else ()
        return any(isinstance(i, dict) and i.get("type") == "mcp_approval_response" for i in items)

    def native_provider(self, model: str) -> Provider | None:
        provider = self.router.pick(model)
        return provider if provider.native_responses else None

    def _native_call(self, raw: dict[str, Any], req: CreateResponseRequest, request_id: str) -> Call:
        if req.background:
            raise UnsupportedError(
                f"The model '{req.model}' is served by an upstream's own Responses API, where background "
                "responses are not relayed; leave out 'background'.",
                param="background",
            )
        return Call(raw, req.model, request_id, bool(req.stream))

    async def native_respond(
        self, raw: dict[str, Any], req: CreateResponseRequest, request_id: str, report: Report | None = None
    ) -> dict[str, Any]:
        """The upstream answers (its chain, tools and state its own); Manifold maps the model and stores."""
        items = input_items(req.input)
        response = await self.router.execute(self._native_call(raw, req, request_id), _native_responses, report)
        response["model"] = req.model
        if req.store is not False and isinstance(response.get("id"), str):
            store = await self.store.responses()
            await store.save(response, items, request_id)
        return response

    async def native_stream(
        self, raw: dict[str, Any], req: CreateResponseRequest, request_id: str, report: Report | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        items = input_items(req.input)
        call = self._native_call(raw, req, request_id)
        upstream = await self.router.execute_stream(call, _open_native_responses_stream, report)

        async def events() -> AsyncIterator[dict[str, Any]]:
            try:
                async for event in upstream:
                    response = event.get("response")
                    if isinstance(response, dict):
                        response["model"] = req.model
                        if event.get("type") in TERMINAL_EVENTS and req.store is not False:
                            store = await self.store.responses()
                            await store.save(response, items, request_id)
                    yield event
            finally:
                aclose = getattr(upstream, "aclose", None)
                if aclose is not None:
                    await aclose()

        return _Owning(events(), upstream)

    # -- background ------------------------------------------------------------------------------------------

    async def start_background(self, p: Prepared) -> Job:
        """Store the response as `queued` and run it in a task; the job's first event is `response.created`."""
        queued = self._skeleton(p, "queued")
        store = await self.store.responses()
        await store.save(queued, p.items, p.request_id, owner=self.owner, lease_until=self._lease_until())
        job = self.jobs.new(queued["id"])
        builder = ResponseBuilder(copy.deepcopy(queued))
        job.builder = builder
        job.extend([builder.lifecycle("response.created"), builder.lifecycle("response.queued")])
        job.task = asyncio.get_running_loop().create_task(self._background(job, p, builder, store))
        return job

    async def _background(self, job: Job, p: Prepared, builder: ResponseBuilder, store: ResponseStore) -> None:
        try:
            # Not written: a queued response with a live lease reads as in_progress (ResponseStore.get), and a
            # cancel from another process is seen at the next lease renewal or by the final only-if-unfinished write.
            builder.response["status"] = "in_progress"
            job.extend([builder.lifecycle("response.in_progress")])
            if p.mcp is not None:
                async for event in self._mcp_events(p, builder, stream=True):
                    job.extend([event])
                await store.update(builder.response, only_if_unfinished=True)
                return
            try:
                compaction, messages = await self._compact_if_needed(p)
                chunks = await self._open(p, messages, stream=True)
            except ManifoldError as exc:
                job.extend(builder.fail(_error_code(exc), exc.message))
            else:
                async for event in self._generate(builder, compaction, chunks):
                    job.extend([event])
            await store.update(builder.response, only_if_unfinished=True)
        except asyncio.CancelledError:
            if self._shutting_down:
                builder.response.update(status="failed", error={"code": "server_error", "message": SHUTDOWN_MESSAGE})
            else:
                builder.response["status"] = "cancelled"
            with contextlib.suppress(ManifoldError):
                await store.update(builder.response, only_if_unfinished=True)
        except ManifoldError as exc:
            log.warning("background response %s: %s", job.response_id, exc.message)
        finally:
            self.jobs.finished(job)

    async def cancel(self, response_id: str) -> dict[str, Any]:
        store = await self.store.responses()
        response = await self._get(store, response_id)
        if not response.get("background"):
            raise InvalidRequestError(
                "Only responses created with 'background' set to true can be cancelled.",
                param="response_id",
                code="invalid_value",
            )
        if response["status"] not in UNFINISHED:
            raise InvalidRequestError(
                f"Cannot cancel a response with status '{response['status']}'; only queued or in_progress "
                "background responses can be cancelled.",
                param="response_id",
                code="invalid_value",
            )
        job = self.jobs.get(response_id)
        if job is not None and job.task is not None and job.running:
            job.task.cancel()
            await asyncio.wait([job.task])
        else:
            # Run by another process: mark it; that process stops its work when it renews its lease.
            cancelled = {**response, "status": "cancelled"}
            await store.update(cancelled, only_if_unfinished=True)
        return await self._get(store, response_id)

    # -- stored responses ------------------------------------------------------------------------------------

    async def _get(self, store: ResponseStore, response_id: str) -> dict[str, Any]:
        stored = await store.get(response_id)
        if stored is None:
            raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
        response = stored.response
        if response.get("status") in UNFINISHED and self.jobs.get(response_id) is None:
            lease = stored.lease_until
            if lease is None or lease < time.time() * 1000:
                failed = await self._fail_lost(store, response)
                if failed is not None:
                    return failed
                again = await store.get(response_id)
                if again is not None:
                    return again.response
        return response

    async def retrieve(self, response_id: str) -> dict[str, Any]:
        response = await self._get(await self.store.responses(), response_id)
        job = self.jobs.get(response_id)
        if job is not None and job.running and job.builder is not None:
            return copy.deepcopy(job.builder.response)  # running here: its output so far
        return response

    async def events(self, response_id: str, starting_after: int) -> AsyncIterator[dict[str, Any]]:
        """The events of a response after `starting_after`: followed live while this process runs it, else
        rebuilt from the stored response."""
        response = await self.retrieve(response_id)
        job = self.jobs.get(response_id)
        if job is not None:
            job.check_resumable(starting_after)
            return job.follow(starting_after)
        return _Listed([e for e in replay(response) if e["sequence_number"] > starting_after])

    async def delete(self, response_id: str) -> None:
        store = await self.store.responses()
        job = self.jobs.get(response_id)
        if job is not None and job.task is not None and job.running:
            job.task.cancel()
            await asyncio.wait([job.task])
        if not await store.delete(response_id):
            raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
        self.jobs.discard(response_id)

    async def input_item_page(self, response_id: str, *, after: str | None, limit: int, order: str) -> Any:
        store = await self.store.responses()
        page = await store.input_item_page(
            response_id, after=after, limit=limit, order="asc" if order == "asc" else "desc"
        )
        if page is None:
            raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
        return page

    # -- token counts and compaction -------------------------------------------------------------------------

    async def count_input_tokens(self, req: TokenCountRequest, request_id: str) -> int:
        if req.previous_response_id is not None and req.conversation is not None:
            raise InvalidRequestError(
                "Mutually exclusive parameters: 'previous_response_id' and 'conversation' cannot be used together.",
                param="conversation",
                code="mutually_exclusive_parameters",
            )
        if req.conversation is not None:
            raise UnsupportedError("Conversations are not supported by this server.", param="conversation")
        tools = function_tools(req.tools)
        own = input_items(req.input)
        context = translate.context_after_compaction([*await self.chain(req.previous_response_id), *own])
        messages = self.messages(req.instructions, context, len(own))
        body: dict[str, Any] = {"model": req.model or "", "messages": messages}
        if tools:
            body["tools"] = translate.chat_tools(tools)
        if req.model:
            provider = self.router.pick(req.model)
            exact = await provider.count_chat_tokens(Call(body, req.model, request_id, False))
            if exact is not None:
                return exact
        return estimate_chat_tokens(body)

    async def compact(self, req: CompactRequest, request_id: str) -> dict[str, Any]:
        own = input_items(req.input)
        context = translate.context_after_compaction([*await self.chain(req.previous_response_id), *own])
        if not context:
            raise InvalidRequestError(
                "Nothing to compact: send 'input' or 'previous_response_id'.", param="input", code="invalid_value"
            )
        provider = self.router.pick(req.model)
        messages = self.messages(req.instructions, context, len(own))
        item, usage = await self._summarize(provider, req.model, messages, request_id)
        kept = [m for m in context if m.get("type") == "message" and m.get("role") == "user"]
        return {
            "id": new_id("resp_"),
            "object": "response.compaction",
            "created_at": now(),
            "output": [*kept, item],
            "usage": usage,
        }

    async def _summarize(
        self, provider: Provider, model: str, messages: list[dict[str, Any]], request_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Ask the model to summarize the conversation; the summary sealed into a compaction item."""
        from manifold.responses.compaction import SUMMARY_PROMPT

        body = {"model": model, "messages": [*messages, {"role": "user", "content": SUMMARY_PROMPT}]}
        completion = normalize_completion(await self.router.chat(Call(body, model, request_id, False)), model)
        choices = completion.get("choices") or [{}]
        summary = str((choices[0].get("message") or {}).get("content") or "")
        item = {"type": "compaction", "id": new_id("cmp_"), "encrypted_content": self.seal.seal(summary, model)}
        usage = translate.response_usage(completion.get("usage")) or translate.response_usage({})
        assert usage is not None
        return item, usage

    async def _compact_if_needed(self, p: Prepared) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """`context_management: [{type: compaction, compact_threshold: N}]`: when the context is estimated
        above N tokens, it is compacted first (the compaction item leads the output) and the model answers
        from the compacted context."""
        messages = await self._fit(p, p.context, len(p.items))
        thresholds = [cm.compact_threshold for cm in p.req.context_management or () if cm.compact_threshold]
        if not thresholds:
            return None, messages
        body = {"model": p.req.model, "messages": messages}
        if estimate_chat_tokens(body) <= min(thresholds):
            return None, messages
        # The latest input stays as it is; everything before it is summarized.
        last_user = max(
            (i for i, m in enumerate(p.context) if m.get("type") == "message" and m.get("role") == "user"), default=-1
        )
        earlier = p.context[:last_user] if last_user > 0 else p.context
        item, _ = await self._summarize(p.provider, p.req.model, self.messages(None, earlier, 0), p.request_id)
        kept = [m for m in earlier if m.get("type") == "message" and m.get("role") == "user"]
        compacted = [*kept, item, *p.context[len(earlier) :]]
        return item, await self._fit(p, compacted, 0)

    async def _count(self, p: Prepared, messages: list[dict[str, Any]]) -> int:
        body = {"model": p.req.model, "messages": messages}
        exact = await p.provider.count_chat_tokens(Call(body, p.req.model, p.request_id, False))
        return exact if exact is not None else estimate_chat_tokens(body)

    async def _fit(self, p: Prepared, context: list[dict[str, Any]], own_count: int) -> list[dict[str, Any]]:
        """The chat messages for a context, fitted to the backend's context window where it is known:
        `truncation: auto` drops items from the beginning of the conversation; `disabled` (the default) answers
        400 when the input does not fit."""
        messages = self.messages(p.req.instructions, context, own_count)
        window = p.provider.context_window
        if window is None:
            return messages
        room = window - (p.req.max_output_tokens or 0)
        if await self._count(p, messages) <= room:
            return messages
        if p.req.truncation == "auto":
            items = list(context)
            while len(items) > 1:
                items.pop(0)
                while len(items) > 1 and items[0].get("type") == "function_call_output":
                    items.pop(0)  # a tool result without its call would be refused
                own_count = min(own_count, len(items))
                messages = self.messages(p.req.instructions, items, own_count)
                if await self._count(p, messages) <= room:
                    return messages
        raise InvalidRequestError(
            f"The input ({await self._count(p, messages)} tokens) does not fit the context window of "
            f"'{p.req.model}' ({window} tokens, {p.req.max_output_tokens or 0} of them for the output). "
            "Shorten it, or set 'truncation' to 'auto' to drop the oldest items.",
            param="input",
            code="context_length_exceeded",
        )


def _native_responses(provider: Provider, call: Call) -> Awaitable[dict[str, Any]]:
    return provider.responses(call)


def _open_native_responses_stream(provider: Provider, call: Call) -> Awaitable[AsyncIterator[dict[str, Any]]]:
    return provider.open_responses_stream(call)


class _Listed:
    """Items that are all there: `buffered()` says so, and the server writes them together."""

    __slots__ = ("_items",)

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self._items = iter(items)

    def __aiter__(self) -> _Listed:
        return self

    def buffered(self) -> bool:
        return True

    async def __anext__(self) -> dict[str, Any]:
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None


class _Shaped:
    """The upstream's chunks, shaped. A class, not an async generator: `aclose()` must close the upstream even
    when iteration never began (closing a generator that never started runs none of its `finally`)."""

    __slots__ = ("_chunks", "_ended", "_shaper", "_upstream")

    def __init__(self, upstream: AsyncIterator[dict[str, Any]], shaper: ChunkShaper) -> None:
        self._upstream = upstream
        self._chunks = aiter(upstream)
        self._shaper = shaper
        self._ended = False

    def __aiter__(self) -> _Shaped:
        return self

    async def __anext__(self) -> dict[str, Any]:
        shaper = self._shaper
        while not self._ended:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
                if shaper.usage is not None:
                    return {"choices": [], "usage": shaper.usage}
                break
            except BaseException:
                await self.aclose()
                raise
            shaped = shaper.shape(chunk)
            if shaped is not None:
                return shaped
        await self.aclose()
        raise StopAsyncIteration

    def buffered(self) -> bool:
        """Whether the next chunk (or the end) is there already (`SSEStream.buffered`)."""
        if self._ended:
            return True
        buffered: Callable[[], bool] | None = getattr(self._upstream, "buffered", None)
        return buffered is not None and buffered()

    async def aclose(self) -> None:
        self._ended = True
        aclose = getattr(self._upstream, "aclose", None)
        if aclose is not None:
            await aclose()


class _ResponseEvents:
    """The events of a streamed response (what `_run` yields, in the same order), as an iterator that says
    whether its next event is ready (`buffered()`), so that the server writes the events that are ready together
    in one write (all the events of one upstream read) instead of one write, and one wait, per event.

    Events are built a whole upstream chunk at a time; when the last ready one is taken, the chunks that have
    already arrived are built too, so that `buffered()` is exact (a chunk that makes no event, such as the role or
    the finish reason, does not leave the server holding frames while the next chunk is awaited). The response
    is stored (`save`) before its terminal event is released: only when that event is asked for, never while
    other events are still unsent. A class, not an async generator: closing it closes the upstream at whatever
    point it stands."""

    __slots__ = ("_builder", "_chunks", "_chunks_buffered", "_done", "_ready", "_save", "_streaming", "_terminal")

    def __init__(
        self,
        builder: ResponseBuilder,
        compaction: dict[str, Any] | None,
        chunks: AsyncIterator[dict[str, Any]],
        save: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self._builder = builder
        self._chunks = chunks
        self._chunks_buffered: Callable[[], bool] | None = getattr(chunks, "buffered", None)
        self._save = save
        self._ready = collections.deque(
            (builder.lifecycle("response.created"), builder.lifecycle("response.in_progress"))
        )
        if compaction is not None:
            self._ready.extend(builder.add_item(compaction))
        self._streaming = True
        self._terminal: dict[str, Any] | None = None  # held until the response is stored
        self._done = False  # the terminal event is out: the end is ready too

    def __aiter__(self) -> _ResponseEvents:
        return self

    def buffered(self) -> bool:
        return bool(self._ready) or self._done or (self._terminal is not None and self._save is None)

    async def __anext__(self) -> dict[str, Any]:
        ready = self._ready
        if not ready:
            await self._fill(wait=True)
            if not ready:
                raise StopAsyncIteration
        event = ready.popleft()
        if not ready and self._streaming:
            await self._fill(wait=False)
        return event

    async def _fill(self, *, wait: bool) -> None:
        """Build events from the chunks that have arrived (`wait`: from the next one, however long it takes),
        until there are some; at the end of the chunks, store the response, then release the terminal event."""
        ready, builder = self._ready, self._builder
        buffered = self._chunks_buffered
        while not ready and self._streaming and (wait or (buffered is not None and buffered())):
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                final = builder.finish()
            except ManifoldError as exc:
                log.warning("response %s failed: %s", builder.response["id"], exc.message)
                final = builder.fail(_error_code(exc), exc.message)
            else:
                ready.extend(builder.feed(chunk))
                continue
            self._streaming = False
            await _aclose(self._chunks)
            ready.extend(final[:-1])
            self._terminal = final[-1]
        if wait and not ready and self._terminal is not None:
            if self._save is not None:
                await self._save()
            ready.append(self._terminal)
            self._terminal = None
            self._done = True

    async def aclose(self) -> None:
        self._streaming = False
        self._terminal = None
        self._ready.clear()
        self._done = True
        await _aclose(self._chunks)


class _GeneratedEvents:
    """The events of a streamed response with `mcp` tools: `response.created`, `response.in_progress`, then
    what `ResponsesEngine._mcp_events` yields, the response stored before its terminal event is released."""

    __slots__ = ("_events", "_ready", "_save")

    def __init__(
        self,
        builder: ResponseBuilder,
        events: AsyncIterator[dict[str, Any]],
        save: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self._events = events
        self._save = save
        self._ready = collections.deque(
            (builder.lifecycle("response.created"), builder.lifecycle("response.in_progress"))
        )

    def __aiter__(self) -> _GeneratedEvents:
        return self

    def buffered(self) -> bool:
        return bool(self._ready)

    async def __anext__(self) -> dict[str, Any]:
        if self._ready:
            return self._ready.popleft()
        event = await anext(self._events)
        if event["type"] in TERMINAL_EVENTS and self._save is not None:
            await self._save()
        return event

    async def aclose(self) -> None:
        self._ready.clear()
        await _aclose(self._events)


async def _aclose(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


class _Owning:
    """A response's events that own the upstream stream they are made from. A client that leaves closes the
    events: that must close the upstream at once, at whatever point the events stand (before the first, between
    two, or while one is awaited), not when the garbage collector finalizes an abandoned inner generator."""

    __slots__ = ("_events", "_upstream")

    def __init__(self, events: AsyncIterator[dict[str, Any]], upstream: AsyncIterator[dict[str, Any]]) -> None:
        self._events = events
        self._upstream = upstream

    def __aiter__(self) -> _Owning:
        return self

    def __anext__(self) -> Awaitable[dict[str, Any]]:
        return self._events.__anext__()

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            aclose = getattr(self._upstream, "aclose", None)
            if aclose is not None:
                await aclose()
