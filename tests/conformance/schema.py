"""Validate JSON payloads against component schemas of OpenAI's own ``openapi.yaml`` (OpenAPI 3.1).

The spec copy lives in ``tests/conformance/openai/openapi.yaml`` (see ``PROVENANCE.md`` there; refresh it
with ``scripts/sync-openai-spec``, never by hand). Typical use in tests::

    from tests.conformance.schema import assert_valid, assert_valid_stream_event, errors

    assert_valid("CreateChatCompletionResponse", body)            # strict: the spec as published
    assert errors("CreateChatCompletionStreamResponse", chunk) == []
    assert_valid_stream_event(event)                               # Responses SSE event, by its `type`
    assert_valid("Response", body, relaxed={"response_user_null"}) # opt into named spec-gap relaxations
    assert_valid("CreateEmbeddingResponse", body, relaxed=True)    # ... or into all of them

Two layers sit between the published YAML and the validator:

* :func:`normalize` (always applied) fixes spec quirks that make JSON Schema 2020-12 misread the
  document: OpenAPI-3.0 ``nullable: true`` becomes ``anyOf [..., {type: null}]``, ``discriminator``
  without ``mapping`` is dropped, ``$recursiveRef: "#"`` becomes a ``$ref`` to the enclosing component.
  The normalized spec is cached as JSON under ``<repo>/.cache/`` because parsing the YAML takes seconds.
* :data:`RELAXATIONS` (opt-in, by name) allow things the schemas forbid although OpenAI's own examples
  and SDKs use them (``null`` user/usage/system_fingerprint, base64 embeddings, stored user/system
  messages, ``null`` cursor ids on empty pages). Relaxations never change strict validation: each set
  of relaxations gets its own patched copy of the affected component schemas and its own registry.

Validation uses ``jsonschema.Draft202012Validator`` with a ``referencing.Registry`` holding the whole
spec under :data:`SPEC_URI`. ``format`` is annotation-only (not asserted), as JSON Schema 2020-12
specifies by default; OpenAI's ``format: unixtime`` etc. are ignored.

Limits of the reference: most component schemas are open (no ``additionalProperties: false``), so a
misspelled *optional* field passes; ``Model`` has no ``type: object`` (a bare string "validates"), so
check ``ListModelsResponse``/``Model`` payloads are objects separately if it matters.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "CACHE_DIR",
    "RELAXATIONS",
    "SPEC_PATH",
    "SPEC_URI",
    "LoadedSpec",
    "Relaxation",
    "RelaxationError",
    "SchemaValidator",
    "assert_valid",
    "assert_valid_stream_event",
    "errors",
    "load_spec",
    "load_validator",
    "normalize",
    "relax",
    "stream_event_schema",
]

JSONDict: TypeAlias = dict[str, Any]
RelaxedArg: TypeAlias = bool | Iterable[str]
"""``False``: strict; ``True``: every relaxation in :data:`RELAXATIONS`; an iterable: those names."""

_HERE: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = _HERE.parent.parent
SPEC_PATH: Final = _HERE / "openai" / "openapi.yaml"
CACHE_DIR: Final = REPO_ROOT / ".cache"
SPEC_URI: Final = "urn:openai:openapi"
_SCHEMA_PREFIX: Final = "#/components/schemas/"
_CACHE_FORMAT: Final = "manifold-openai-spec-cache/1"

_MAX_MESSAGE: Final = 200
_MAX_LISTED_ERRORS: Final = 25
_MAX_DUMP: Final = 1200


# --------------------------------------------------------------------------------------------------
# Loading and normalizing
# --------------------------------------------------------------------------------------------------


def _json_yaml_loader() -> type[Any]:
    """A safe YAML loader (C-accelerated when available) that yields pure JSON data.

    PyYAML turns unquoted YAML-1.1 timestamps (``version: 2024-10-01``) into ``datetime.date``;
    dropping the timestamp resolver keeps them as the strings they are in ``openapi.json``.
    """
    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader: type[Any] = type("_JsonYamlLoader", (base,), {})
    loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }
    return loader


_LOADER: Final = _json_yaml_loader()

# Keys whose values are data, not subschemas: never rewrite inside them.
_DATA_KEYS: Final = frozenset({"example", "examples", "default", "const", "enum"})
# Keys whose values map arbitrary (data) names to subschemas.
_NAMED_SUBSCHEMAS: Final = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})


def _normalize_node(node: Any, component: str | None) -> Any:
    if isinstance(node, list):
        return [_normalize_node(item, component) for item in node]
    if not isinstance(node, dict):
        return node
    out: JSONDict = {}
    for key, value in node.items():
        if key in _DATA_KEYS or (isinstance(key, str) and key.startswith("x-")):
            out[key] = value
        elif key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            out[key] = {name: _normalize_node(sub, component) for name, sub in value.items()}
        else:
            out[key] = _normalize_node(value, component)

    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict) and "mapping" not in discriminator:
        # OAS-aware validators would resolve `#/components/schemas/<type value>`, which does not exist.
        del out["discriminator"]
    if out.get("$recursiveRef") == "#":  # draft 2019-09 keyword, unknown (always true) in 2020-12
        if component is None:
            raise ValueError("$recursiveRef outside components.schemas cannot be resolved")
        del out["$recursiveRef"]
        out["$ref"] = _SCHEMA_PREFIX + component
    out.pop("$recursiveAnchor", None)
    if out.pop("nullable", False) is True:  # OpenAPI 3.0 keyword, ignored by JSON Schema 2020-12
        return {"anyOf": [out, {"type": "null"}]}
    return out


def normalize(spec: Mapping[str, Any]) -> JSONDict:
    """Return a JSON-Schema-2020-12-faithful copy of an OpenAPI 3.1 document (input is not mutated).

    * ``nullable: true`` -> ``{"anyOf": [<schema without nullable>, {"type": "null"}]}``
    * ``discriminator`` without ``mapping`` -> dropped (jsonschema ignores it anyway; OAS validators choke)
    * ``$recursiveRef: "#"`` -> ``$ref`` to the enclosing component schema; ``$recursiveAnchor`` dropped
    """
    out: JSONDict = {key: _normalize_node(value, None) for key, value in spec.items() if key != "components"}
    components: Mapping[str, Any] = spec.get("components") or {}
    out_components: JSONDict = {
        key: _normalize_node(value, None) for key, value in components.items() if key != "schemas"
    }
    out_components["schemas"] = {
        name: _normalize_node(schema, name) for name, schema in (components.get("schemas") or {}).items()
    }
    out["components"] = out_components
    return out


@functools.cache
def _normalizer_fingerprint() -> str:
    """Changes whenever this module changes, so a stale normalized cache is never reused."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_file(cache_dir: Path, sha: str) -> Path:
    return cache_dir / f"openai-spec-{sha[:16]}.json"


def _read_cache(path: Path, sha: str) -> JSONDict | None:
    try:
        with path.open("rb") as fh:
            blob = json.load(fh)
    except (OSError, ValueError):
        return None
    if (
        isinstance(blob, dict)
        and blob.get("format") == _CACHE_FORMAT
        and blob.get("source_sha256") == sha
        and blob.get("normalizer") == _normalizer_fingerprint()
        and isinstance(blob.get("spec"), dict)
    ):
        spec: JSONDict = blob["spec"]
        return spec
    return None


def _write_cache(path: Path, sha: str, spec_json: str) -> None:
    """Atomically write the cache (safe with parallel test workers); silently skip if unwritable."""
    header = json.dumps({"format": _CACHE_FORMAT, "source_sha256": sha, "normalizer": _normalizer_fingerprint()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(header[:-1] + ', "spec": ' + spec_json + "}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


@dataclass(frozen=True)
class LoadedSpec:
    spec: JSONDict
    """The normalized spec (pure JSON data)."""
    source_sha256: str
    from_cache: bool


def load_spec(path: Path = SPEC_PATH, *, cache_dir: Path | None = CACHE_DIR) -> LoadedSpec:
    """Load and normalize ``path``, reusing ``<cache_dir>/openai-spec-<sha256[:16]>.json`` when valid.

    ``cache_dir=None`` disables the cache. The result is always JSON-round-tripped, so a cold load and a
    cached load yield identical data (e.g. non-string YAML mapping keys become strings either way).
    """
    raw = Path(path).read_bytes()
    sha = _sha256(raw)
    cache_path = _cache_file(cache_dir, sha) if cache_dir is not None else None
    if cache_path is not None:
        cached = _read_cache(cache_path, sha)
        if cached is not None:
            return LoadedSpec(cached, sha, from_cache=True)

    document = yaml.load(raw, Loader=_LOADER)  # a safe loader (see _json_yaml_loader)
    if not isinstance(document, dict) or not isinstance(document.get("components"), dict):
        raise ValueError(f"{path} is not an OpenAPI document with components")
    spec_json = json.dumps(normalize(document), ensure_ascii=False, separators=(",", ":"))
    if cache_path is not None:
        _write_cache(cache_path, sha, spec_json)
    return LoadedSpec(json.loads(spec_json), sha, from_cache=False)


# --------------------------------------------------------------------------------------------------
# Opt-in relaxations of known spec gaps (CLIENTS.md 1.3 items 6 and 8)
# --------------------------------------------------------------------------------------------------


class RelaxationError(RuntimeError):
    """A relaxation no longer fits the spec (the spec changed shape): update the relaxation."""


class _SchemaPatcher:
    """Copy-on-write view of ``components.schemas``: edited components are deep-copied first."""

    def __init__(self, schemas: Mapping[str, Any]) -> None:
        self._original = schemas
        self.schemas: JSONDict = dict(schemas)
        self._owned: set[str] = set()

    def edit(self, name: str) -> JSONDict:
        if name not in self._original and name not in self._owned:
            raise RelaxationError(f"component schema {name!r} is missing from the spec")
        if name not in self._owned:
            self.schemas[name] = copy.deepcopy(self._original[name])
            self._owned.add(name)
        schema: JSONDict = self.schemas[name]
        return schema

    def add(self, name: str, schema: JSONDict) -> None:
        if name in self._original:
            raise RelaxationError(f"component schema {name!r} already exists in the spec")
        self.schemas[name] = schema
        self._owned.add(name)

    def original(self, name: str) -> JSONDict:
        if name not in self._original:
            raise RelaxationError(f"component schema {name!r} is missing from the spec")
        schema: JSONDict = self._original[name]
        return schema


def _or_null(schema: Any) -> JSONDict:
    return {"anyOf": [schema, {"type": "null"}]}


def _props(schema: JSONDict, where: str, *names: str) -> JSONDict:
    props = schema.get("properties")
    if not isinstance(props, dict) or any(name not in props for name in names):
        raise RelaxationError(f"{where}: expected properties {names}")
    return props


def _allof_member(schema: JSONDict, where: str, test: Callable[[JSONDict], bool]) -> JSONDict:
    for member in schema.get("allOf") or []:
        if isinstance(member, dict) and test(member):
            return member
    raise RelaxationError(f"{where}: no matching allOf member")


def _relax_response_user(p: _SchemaPatcher) -> None:
    # `user` comes from ModelResponseProperties, which request schemas share: relax a private copy.
    relaxed = copy.deepcopy(p.original("ModelResponseProperties"))
    props = _props(relaxed, "ModelResponseProperties", "user")
    props["user"] = _or_null(props["user"])
    p.add("ModelResponseProperties__relaxed", relaxed)
    member = _allof_member(
        p.edit("Response"), "Response", lambda m: m.get("$ref") == _SCHEMA_PREFIX + "ModelResponseProperties"
    )
    member["$ref"] = _SCHEMA_PREFIX + "ModelResponseProperties__relaxed"


def _relax_response_usage(p: _SchemaPatcher) -> None:
    member = _allof_member(p.edit("Response"), "Response", lambda m: "usage" in (m.get("properties") or {}))
    member["properties"]["usage"] = _or_null(member["properties"]["usage"])


_SYSTEM_FINGERPRINT_SCHEMAS: Final = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
)


def _relax_system_fingerprint(p: _SchemaPatcher) -> None:
    for name in _SYSTEM_FINGERPRINT_SCHEMAS:
        props = _props(p.edit(name), name, "system_fingerprint")
        props["system_fingerprint"] = _or_null(props["system_fingerprint"])


def _relax_embedding_base64(p: _SchemaPatcher) -> None:
    props = _props(p.edit("Embedding"), "Embedding", "embedding")
    base64_vector = {
        "type": "string",
        "contentEncoding": "base64",
        "pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        "description": "encoding_format=base64: little-endian float32 vector, base64-encoded.",
    }
    props["embedding"] = {"anyOf": [props["embedding"], base64_vector]}


_STORED_ROLES: Final = ["developer", "system", "user", "assistant", "tool"]


def _relax_stored_message_roles(p: _SchemaPatcher) -> None:
    # GET /chat/completions/{id}/messages lists every stored message, yet its item schema is
    # allOf[ChatCompletionResponseMessage (role: assistant, refusal required), {id, content_parts}].
    relaxed = copy.deepcopy(p.original("ChatCompletionResponseMessage"))
    props = _props(relaxed, "ChatCompletionResponseMessage", "role")
    props["role"] = {"type": "string", "enum": list(_STORED_ROLES)}
    relaxed["required"] = ["role", "content"]
    p.add("ChatCompletionStoredMessage__relaxed", relaxed)
    data = _props(p.edit("ChatCompletionMessageList"), "ChatCompletionMessageList", "data")["data"]
    member = _allof_member(
        data.get("items") or {},
        "ChatCompletionMessageList.data.items",
        lambda m: m.get("$ref") == _SCHEMA_PREFIX + "ChatCompletionResponseMessage",
    )
    member["$ref"] = _SCHEMA_PREFIX + "ChatCompletionStoredMessage__relaxed"


_CURSOR_PAGES: Final = ("ChatCompletionList", "ChatCompletionMessageList", "ResponseItemList")


def _relax_empty_page_ids(p: _SchemaPatcher) -> None:
    for name in _CURSOR_PAGES:
        schema = p.edit(name)
        props = _props(schema, name, "data", "first_id", "last_id")
        props["first_id"] = _or_null(props["first_id"])
        props["last_id"] = _or_null(props["last_id"])
        # ...but only on an empty page: a non-empty page still needs string ids.
        schema.setdefault("allOf", []).append(
            {
                "if": {"required": ["data"], "properties": {"data": {"minItems": 1}}},
                "then": {"properties": {"first_id": {"type": "string"}, "last_id": {"type": "string"}}},
            }
        )


def _relax_text_completion_nulls(p: _SchemaPatcher) -> None:
    # Legacy completion chunks share the non-streamed schema, where finish_reason is a required enum; every
    # non-final chunk (OpenAI, vLLM, llama.cpp alike) has `finish_reason: null`. With echo + logprobs the first
    # prompt token has no logprob: `token_logprobs[0]` and `top_logprobs[0]` are null.
    schema = p.edit("CreateCompletionResponse")
    choice = _props(schema, "CreateCompletionResponse", "choices")["choices"]["items"]
    props = _props(choice, "CreateCompletionResponse.choices.items", "finish_reason", "logprobs")
    props["finish_reason"] = _or_null(props["finish_reason"])
    logprobs = props["logprobs"]["anyOf"][0]
    lp = _props(logprobs, "CreateCompletionResponse.choices.items.logprobs", "token_logprobs", "top_logprobs")
    lp["token_logprobs"]["items"] = _or_null(lp["token_logprobs"]["items"])
    lp["top_logprobs"]["items"] = _or_null(lp["top_logprobs"]["items"])


@dataclass(frozen=True)
class Relaxation:
    name: str
    description: str
    apply: Callable[[_SchemaPatcher], None]


RELAXATIONS: Final[Mapping[str, Relaxation]] = {
    r.name: r
    for r in (
        Relaxation(
            "response_user_null",
            "Response.user may be null (every Response example; SDK Optional[str]).",
            _relax_response_user,
        ),
        Relaxation(
            "response_usage_null",
            "Response.usage may be null while queued/in_progress/cancelled (SDK Optional[ResponseUsage]).",
            _relax_response_usage,
        ),
        Relaxation(
            "system_fingerprint_null",
            "system_fingerprint may be null on chat.completion(.chunk) and text_completion.",
            _relax_system_fingerprint,
        ),
        Relaxation(
            "embedding_base64",
            "Embedding.embedding may be a base64 string (encoding_format=base64, the SDK default).",
            _relax_embedding_base64,
        ),
        Relaxation(
            "stored_message_roles",
            "ChatCompletionMessageList items may be developer/system/user/tool messages without refusal.",
            _relax_stored_message_roles,
        ),
        Relaxation(
            "empty_page_null_ids",
            "first_id/last_id may be null on an empty ChatCompletionList/MessageList/ResponseItemList page.",
            _relax_empty_page_ids,
        ),
        Relaxation(
            "text_completion_nulls",
            "text_completion stream chunks have finish_reason null until a choice ends; with echo + logprobs the"
            " first prompt token's token_logprobs/top_logprobs entries are null (as OpenAI sends them).",
            _relax_text_completion_nulls,
        ),
    )
}


def _relaxation_set(relaxed: RelaxedArg) -> frozenset[str]:
    if relaxed is True:
        return frozenset(RELAXATIONS)
    if relaxed is False:
        return frozenset()
    # A lone string is one name, not an iterable of one-letter names.
    names = frozenset({relaxed}) if isinstance(relaxed, str) else frozenset(relaxed)
    unknown = sorted(names - RELAXATIONS.keys())
    if unknown:
        raise ValueError(f"unknown relaxation(s) {unknown}; known: {sorted(RELAXATIONS)}")
    return names


def relax(spec: Mapping[str, Any], names: Iterable[str]) -> JSONDict:
    """Return ``spec`` with the named relaxations applied; ``spec`` itself is left untouched."""
    patcher = _SchemaPatcher(spec["components"]["schemas"])
    for name in sorted(_relaxation_set(names)):  # deterministic order
        RELAXATIONS[name].apply(patcher)
    return {**spec, "components": {**spec["components"], "schemas": patcher.schemas}}


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _shorten(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_error(error: ValidationError) -> str:
    line = f"{error.json_path}: {_shorten(error.message)}"
    if error.context:  # anyOf/oneOf: say which branch came closest, and why it failed
        # best_match descends into the context preferring the deepest error of the branch that
        # matches the instance's type (not best_match(error.context), which prefers shallow errors
        # such as "is not of type 'null'").
        best = best_match([error])
        if best is not None and best is not error:
            line += f" [closest: {best.json_path}: {_shorten(best.message, 160)}]"
    return line


def _dump(payload: Any) -> str:
    try:
        text = json.dumps(payload, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):  # e.g. circular structures
        text = repr(payload)
    if len(text) > _MAX_DUMP:
        text = f"{text[:_MAX_DUMP]}… ({len(text)} chars)"
    return text


class _Variant:
    """One registry (strict, or with one set of relaxations) and its per-schema validators."""

    def __init__(self, spec: JSONDict) -> None:
        self.spec = spec
        self.schemas: JSONDict = spec["components"]["schemas"]
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec))
        self._validators: dict[str, Draft202012Validator] = {}

    def validator(self, name: str) -> Draft202012Validator:
        found = self._validators.get(name)
        if found is None:
            found = Draft202012Validator({"$ref": f"{SPEC_URI}{_SCHEMA_PREFIX}{name}"}, registry=self.registry)
            self._validators[name] = found
        return found


class SchemaValidator:
    """Validates payloads against ``components.schemas`` of a normalized OpenAPI 3.1 spec.

    Every method takes ``relaxed``: ``False`` (default, the spec as published), ``True`` (all of
    :data:`RELAXATIONS`) or an iterable of relaxation names.
    """

    def __init__(self, spec: JSONDict, *, source_sha256: str | None = None, from_cache: bool = False) -> None:
        """``spec`` must already be normalized (see :func:`normalize`)."""
        self.spec = spec
        self.source_sha256 = source_sha256
        self.from_cache = from_cache
        self._lock = threading.Lock()
        self._variants: dict[frozenset[str], _Variant] = {frozenset(): _Variant(spec)}
        self._event_types: dict[str, dict[str, str]] = {}

    @classmethod
    def from_file(cls, path: Path = SPEC_PATH, *, cache_dir: Path | None = CACHE_DIR) -> SchemaValidator:
        loaded = load_spec(path, cache_dir=cache_dir)
        return cls(loaded.spec, source_sha256=loaded.source_sha256, from_cache=loaded.from_cache)

    # -- lookup ------------------------------------------------------------------------------------

    def _variant(self, relaxed: RelaxedArg) -> _Variant:
        key = _relaxation_set(relaxed)
        with self._lock:
            variant = self._variants.get(key)
            if variant is None:
                variant = self._variants[key] = _Variant(relax(self.spec, key))
            return variant

    def _check_name(self, variant: _Variant, name: str) -> None:
        if name not in variant.schemas:
            close = difflib.get_close_matches(name, variant.schemas, n=5, cutoff=0.6)
            hint = f"; did you mean {close}?" if close else ""
            raise KeyError(f"no component schema {name!r} in the OpenAI spec{hint}")

    def schema_names(self) -> list[str]:
        """Names of all component schemas of the published spec."""
        return sorted(self.spec["components"]["schemas"])

    def schema(self, name: str, *, relaxed: RelaxedArg = False) -> JSONDict:
        """The (normalized, possibly relaxed) component schema ``name``. Do not mutate it."""
        variant = self._variant(relaxed)
        self._check_name(variant, name)
        schema: JSONDict = variant.schemas[name]
        return schema

    def validator(self, name: str, *, relaxed: RelaxedArg = False) -> Draft202012Validator:
        """A cached ``Draft202012Validator`` for component ``name`` (for ``iter_errors``/``is_valid``)."""
        variant = self._variant(relaxed)
        self._check_name(variant, name)
        return variant.validator(name)

    # -- validation --------------------------------------------------------------------------------

    def errors(self, name: str, payload: Any, *, relaxed: RelaxedArg = False) -> list[str]:
        """Readable, de-duplicated validation errors (``[]`` when ``payload`` conforms), sorted by path.

        Each line is ``<json path>: <message>``; for failed ``anyOf``/``oneOf`` it adds
        ``[closest: <path>: <message>]`` from the branch that came nearest to matching.
        """
        found = self.validator(name, relaxed=relaxed).iter_errors(payload)
        lines = (_format_error(e) for e in sorted(found, key=lambda e: (e.json_path, e.message)))
        return list(dict.fromkeys(lines))  # allOf members often repeat the same complaint

    def is_valid(self, name: str, payload: Any, *, relaxed: RelaxedArg = False) -> bool:
        return bool(self.validator(name, relaxed=relaxed).is_valid(payload))

    def assert_valid(self, name: str, payload: Any, *, relaxed: RelaxedArg = False) -> None:
        """Raise ``AssertionError`` listing the errors and a short dump of ``payload`` if it is invalid."""
        __tracebackhide__ = True
        problems = self.errors(name, payload, relaxed=relaxed)
        if not problems:
            return
        mode = _describe_mode(relaxed)
        listed = problems[:_MAX_LISTED_ERRORS]
        more = len(problems) - len(listed)
        lines = [f"payload does not conform to OpenAI schema {name!r} ({mode}): {len(problems)} error(s)"]
        lines += [f"  - {p}" for p in listed]
        if more:
            lines.append(f"  ... and {more} more")
        lines.append(f"payload: {_dump(payload)}")
        raise AssertionError("\n".join(lines))

    # -- Responses streaming -------------------------------------------------------------------------

    def stream_event_types(self, union: str = "ResponseStreamEvent") -> dict[str, str]:
        """Map each event ``type`` value of ``union``'s members to the member's schema name."""
        with self._lock:
            cached = self._event_types.get(union)
        if cached is not None:
            return cached
        schemas = self.spec["components"]["schemas"]
        if union not in schemas:
            raise KeyError(f"no component schema {union!r} in the OpenAI spec")
        members = schemas[union].get("anyOf") or schemas[union].get("oneOf") or []
        mapping: dict[str, str] = {}
        for member in members:
            ref = member.get("$ref", "") if isinstance(member, dict) else ""
            if not ref.startswith(_SCHEMA_PREFIX):
                raise ValueError(f"{union}: member {member!r} is not a component $ref")
            name = ref.removeprefix(_SCHEMA_PREFIX)
            type_schema = schemas[name].get("properties", {}).get("type", {})
            values = type_schema.get("enum") or ([type_schema["const"]] if "const" in type_schema else [])
            for value in values:
                if value in mapping and mapping[value] != name:
                    raise ValueError(f"{union}: event type {value!r} in both {mapping[value]} and {name}")
                mapping[value] = name
        with self._lock:
            self._event_types[union] = mapping
        return mapping

    def stream_event_schema(self, event_type: str, union: str = "ResponseStreamEvent") -> str:
        """The name of the ``union`` member whose ``type`` enum contains ``event_type``.

        Validate against that member instead of the 58-way ``anyOf``: the errors are far more precise.
        """
        mapping = self.stream_event_types(union)
        try:
            return mapping[event_type]
        except KeyError:
            close = difflib.get_close_matches(event_type, mapping, n=3, cutoff=0.6)
            hint = f"; did you mean {close}?" if close else ""
            raise KeyError(f"{event_type!r} is not an event type of {union}{hint}") from None

    def assert_valid_stream_event(
        self, event: Any, *, relaxed: RelaxedArg = False, union: str = "ResponseStreamEvent"
    ) -> str:
        """Validate one decoded SSE ``data`` object against the member its ``type`` selects.

        Returns the schema name used. Raises ``AssertionError`` if the type is missing/unknown or the
        event does not conform.
        """
        __tracebackhide__ = True
        event_type = event.get("type") if isinstance(event, dict) else None
        if not isinstance(event_type, str):
            raise AssertionError(f"stream event has no string 'type': {_dump(event)}")
        try:
            name = self.stream_event_schema(event_type, union)
        except KeyError as exc:
            raise AssertionError(f"{exc.args[0]}: {_dump(event)}") from None
        self.assert_valid(name, event, relaxed=relaxed)
        return name


def _describe_mode(relaxed: RelaxedArg) -> str:
    names = _relaxation_set(relaxed)
    if not names:
        return "strict"
    if names == RELAXATIONS.keys():
        return "all relaxations"
    return "relaxed: " + ", ".join(sorted(names))


# --------------------------------------------------------------------------------------------------
# Module-level singleton and shortcuts
# --------------------------------------------------------------------------------------------------


@functools.cache
def load_validator() -> SchemaValidator:
    """The process-wide validator for ``tests/conformance/openai/openapi.yaml`` (normalized, cached)."""
    return SchemaValidator.from_file(SPEC_PATH, cache_dir=CACHE_DIR)


def errors(schema_name: str, payload: Any, *, relaxed: RelaxedArg = False) -> list[str]:
    """Shortcut for ``load_validator().errors(...)``."""
    return load_validator().errors(schema_name, payload, relaxed=relaxed)


def assert_valid(schema_name: str, payload: Any, *, relaxed: RelaxedArg = False) -> None:
    """Shortcut for ``load_validator().assert_valid(...)``."""
    __tracebackhide__ = True
    load_validator().assert_valid(schema_name, payload, relaxed=relaxed)


def stream_event_schema(event_type: str, union: str = "ResponseStreamEvent") -> str:
    """Shortcut for ``load_validator().stream_event_schema(...)``."""
    return load_validator().stream_event_schema(event_type, union)


def assert_valid_stream_event(event: Any, *, relaxed: RelaxedArg = False) -> str:
    """Shortcut for ``load_validator().assert_valid_stream_event(...)``."""
    __tracebackhide__ = True
    return load_validator().assert_valid_stream_event(event, relaxed=relaxed)
