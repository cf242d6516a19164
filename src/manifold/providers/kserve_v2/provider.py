"""KServe v2 / Open Inference Protocol servers: MLServer, Triton, KServe, Seldon Core 2's runtimes.

`provider: kserve_v2` with `mode: tensors` (default; Seldon's tensor convention over `/infer` and `/infer_stream`)
or `mode: generate` (the generate extension: `/generate` and `/generate_stream`). `api_base` is the server's root
(`http://host:8080`); the model is addressed in the URL (`/v2/models/{model}[/versions/{model_version}]/…`).

Errors: the server's status decides, its message is kept. 4xx pass through with their status, except 404 (the
deployment names a model the server does not serve: a configuration problem, so 502) and 424 (the generate
extension's "generation failed": 502); 5xx, refused and cut connections are 502, timeouts 504.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from manifold import _json
from manifold.api.sse_decoder import SSELineTooLong
from manifold.api.upstream import UpstreamShapeError
from manifold.config import DeploymentBase, KServeV2Deployment
from manifold.errors import BadGatewayError, ManifoldError, UnsupportedError
from manifold.providers.base import Call, Capability, ChunkStream, Provider, of_kind
from manifold.providers.kserve_v2 import translate
from manifold.providers.kserve_v2.chat_template import ChatTemplate, template_problem
from manifold.providers.kserve_v2.stream import GenerateStreamParser, InferStreamParser
from manifold.providers.transport import Response, TransportError
from manifold.providers.upstream_http import UpstreamSession, error_from_upstream

MODES = ("tensors", "generate")
PARAMETERS_IN = ("parameters", "body")
_AS_BAD_GATEWAY = (404, 424)


class KServeV2Provider(Provider):
    """`kserve_v2` deployments; the instance is of the class for the deployment's `mode`."""

    deployment: KServeV2Deployment

    def __new__(cls, deployment: KServeV2Deployment) -> KServeV2Provider:
        if cls is KServeV2Provider:
            cls = GenerateProvider if deployment.mode == "generate" else TensorsProvider
        return super().__new__(cls)

    def __init__(self, deployment: KServeV2Deployment) -> None:
        super().__init__(deployment)
        self.http = UpstreamSession(deployment)
        root = (deployment.api_base or "").rstrip("/")
        self.server_url = root.removesuffix("/v2") + "/v2"
        self.model_url = f"{self.server_url}/models/{quote(deployment.upstream_model, safe='')}"
        if deployment.model_version:
            self.model_url += f"/versions/{quote(deployment.model_version, safe='')}"
        auth = {"authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else {}
        self.headers = {**auth, **deployment.headers}
        self._json_headers = {"content-type": "application/json", **self.headers}
        self._stream_headers = {**self._json_headers, "accept": "text/event-stream"}

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, KServeV2Deployment)
        out = []
        if not deployment.api_base:
            out.append("api_base: required for kserve_v2: the server's root URL (e.g. http://127.0.0.1:8080)")
        elif not deployment.api_base.startswith(("http://", "https://")):
            out.append(f"api_base: {deployment.api_base!r} must start with http:// or https://")
        mode = deployment.mode or "tensors"
        if mode not in MODES:
            out.append(f"mode: {mode!r} is not one of: {', '.join(MODES)}")
        if deployment.model_version is not None and ("/" in deployment.model_version or not deployment.model_version):
            out.append(f"model_version: {deployment.model_version!r} must be a non-empty name without '/'")
        if mode != "generate":
            for key in ("chat_template", "generate_parameters_in"):
                if getattr(deployment, key) is not None:
                    out.append(f"{key}: only used with mode: generate")
        if deployment.chat_template is not None:
            problem = template_problem(deployment.chat_template)
            if problem:
                out.append(f"chat_template: {problem}")
        if deployment.generate_parameters_in not in (None, *PARAMETERS_IN):
            out.append(f"generate_parameters_in: {deployment.generate_parameters_in!r} is not one of: parameters, body")
        return out

    async def start(self) -> None:
        await self.http.start()

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- the server's own endpoints ------------------------------------------------------------------------------

    async def _get_status(self, url: str) -> int:
        status = await self.http.probe(url, self.headers, min(5.0, self.deployment.timeouts.first_byte))
        return 0 if status is None else status

    async def ready(self) -> bool:
        """Server and model ready. Bodies vary (MLServer: empty; KServe: `{"ready": true}`): the status decides."""
        return await self._get_status(self.server_url + "/health/ready") == 200 and (
            await self._get_status(self.model_url + "/ready") == 200
        )

    async def model_metadata(self) -> dict[str, Any]:
        """`GET /v2/models/{model}`: `{name, versions, platform, inputs, outputs}`."""
        resp = await self.http.send("GET", self.model_url, headers=self.headers)
        if resp.status >= 400:
            raise await self._error(resp)
        data = await self.http.read_json(resp)
        if not isinstance(data, dict):
            raise BadGatewayError(f"The upstream for {self.http.label} returned non-object model metadata.")
        return data

    # -- plumbing ------------------------------------------------------------------------------------------------

    async def _error(self, resp: Response) -> ManifoldError:
        raw = await self.http.read_error_body(resp)
        message = translate.error_body_text(raw)
        label = self.http.label
        if resp.status in _AS_BAD_GATEWAY:
            text = f"The upstream for {label} failed with status {resp.status}"
            return BadGatewayError(text + (f": {message}" if message else "."), code="upstream_error")
        body = _json.encode({"error": message}) if message else b""
        return error_from_upstream(resp.status, body, resp.headers, label)

    async def _post(self, url: str, payload: dict[str, Any], call: Call, *, stream: bool) -> Response:
        headers = {**(self._stream_headers if stream else self._json_headers), "x-request-id": call.request_id}
        resp = await self.http.send("POST", url, data=_json.encode(payload), headers=headers)
        if resp.status >= 400:
            raise await self._error(resp)
        return resp

    async def _post_json(self, url: str, payload: dict[str, Any], call: Call) -> Any:
        return await self.http.read_json(await self._post(url, payload, call, stream=False))

    def _bad_reply(self, exc: Exception) -> UpstreamShapeError:
        return UpstreamShapeError(f"The upstream for {self.http.label} sent an unexpected reply: {exc}")

    async def _relay(self, resp: Response, parser: InferStreamParser | GenerateStreamParser) -> ChunkStream:
        finished = False
        try:
            while (data := await resp.next_chunk()) is not None:
                for chunk in parser.feed(data):
                    yield chunk
            for chunk in parser.close():
                yield chunk
            finished = True
        except translate.OIPStreamError as exc:
            raise BadGatewayError(f"The upstream for {self.http.label} failed mid-stream: {exc}") from None
        except translate.OIPFormatError as exc:
            raise self._bad_reply(exc) from None
        except SSELineTooLong as exc:
            raise BadGatewayError(
                f"The upstream for {self.http.label} sent {exc} (limits.max_sse_line_bytes).",
                code="upstream_response_too_large",
            ) from None
        except TransportError as exc:
            raise self.http.translate(exc, mid_stream=True) from None
        finally:
            if finished:
                resp.release()
            else:
                resp.close()

    async def _replayed(self, chunks: list[dict[str, Any]]) -> ChunkStream:
        for chunk in chunks:
            yield chunk

    def _is_json(self, resp: Response) -> bool:
        return resp.content_type == "application/json"


class TensorsProvider(KServeV2Provider):
    """Seldon Core 2's tensor convention over `/infer` and `/infer_stream`."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.CHAT,
            Capability.STREAM,
            Capability.TOOLS,
            Capability.VISION,
            Capability.EMBEDDINGS,
            Capability.IMAGES,
        }
    )

    async def chat(self, call: Call) -> dict[str, Any]:
        payload = translate.to_infer_chat(call.body, call.request_id)
        data = await self._post_json(self.model_url + "/infer", payload, call)
        try:
            return translate.from_infer_chat(data)
        except translate.OIPFormatError as exc:
            raise self._bad_reply(exc) from None

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        payload = translate.to_infer_chat(call.body, call.request_id)
        resp = await self._post(self.model_url + "/infer_stream", payload, call, stream=True)
        if self._is_json(resp):
            try:
                completion = translate.from_infer_chat(await self.http.read_json(resp))
            except translate.OIPFormatError as exc:
                raise self._bad_reply(exc) from None
            return self._replayed(translate.completion_as_chunks(completion))
        return self._relay(resp, InferStreamParser(self.http.max_sse_line_bytes))

    async def embeddings(self, call: Call) -> dict[str, Any]:
        payload = translate.to_infer_embeddings(call.body, call.request_id)
        data = await self._post_json(self.model_url + "/infer", payload, call)
        try:
            return translate.from_infer_embeddings(data, call.body.get("encoding_format"))
        except translate.OIPFormatError as exc:
            raise self._bad_reply(exc) from None

    async def images(self, call: Call) -> dict[str, Any]:
        payload = translate.to_infer_images(call.body, call.request_id)
        data = await self._post_json(self.model_url + "/infer", payload, call)
        try:
            return translate.from_infer_images(data)
        except translate.OIPFormatError as exc:
            raise self._bad_reply(exc) from None


class GenerateProvider(KServeV2Provider):
    """The generate extension: text in, text out; the conversation rendered by the deployment's chat template
    (or, without one, the single user message sent as it is, for the server's own template)."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CHAT, Capability.STREAM})

    def __init__(self, deployment: KServeV2Deployment) -> None:
        super().__init__(deployment)
        self.template = ChatTemplate(deployment.chat_template) if deployment.chat_template else None
        self.parameters_in = deployment.generate_parameters_in or "parameters"

    def _payload(self, call: Call, stream: bool) -> dict[str, Any]:
        translate.check_generate_request(call.body, call.public_model)
        messages = translate.prompt_messages(call.body)
        if self.template is not None:
            prompt = self.template.render(messages, call.public_model)
        else:
            prompt = translate.bare_prompt(messages, call.public_model)
        return translate.to_generate(call.body, prompt, stream=stream, parameters_in=self.parameters_in)

    async def chat(self, call: Call) -> dict[str, Any]:
        data = await self._post_json(self.model_url + "/generate", self._payload(call, False), call)
        try:
            return translate.from_generate(data)
        except translate.OIPFormatError as exc:
            raise self._bad_reply(exc) from None

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        resp = await self._post(self.model_url + "/generate_stream", self._payload(call, True), call, stream=True)
        if self._is_json(resp):
            try:
                completion = translate.from_generate(await self.http.read_json(resp))
            except translate.OIPFormatError as exc:
                raise self._bad_reply(exc) from None
            return self._replayed(translate.completion_as_chunks(completion))
        return self._relay(resp, GenerateStreamParser(self.http.max_sse_line_bytes))

    async def embeddings(self, call: Call) -> dict[str, Any]:
        raise UnsupportedError(
            f"The model '{call.public_model}' (a text generation endpoint) does not support embeddings.",
            param="model",
        )

    async def images(self, call: Call) -> dict[str, Any]:
        raise UnsupportedError(
            f"The model '{call.public_model}' (a text generation endpoint) does not support image generation.",
            param="model",
        )
