"""The one place backend kinds are named. Each maps to its provider class, imported only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from manifold.config import Deployment
    from manifold.providers.base import Provider


class ProviderKind(NamedTuple):
    module: str
    class_name: str

    def load(self) -> type[Provider]:
        cls: type[Provider] = getattr(importlib.import_module(self.module), self.class_name)
        return cls

    def check(self, deployment: Deployment) -> list[str]:
        return self.load().check(deployment)


PROVIDERS: dict[str, ProviderKind] = {
    "openai": ProviderKind("manifold.providers.openai_compatible.provider", "OpenAICompatibleProvider"),
    "azure": ProviderKind("manifold.providers.openai_compatible.provider", "AzureOpenAIProvider"),
    "local": ProviderKind("manifold.providers.local.provider", "LocalModelProvider"),
    "kserve_v2": ProviderKind("manifold.providers.kserve_v2.provider", "KServeV2Provider"),
    "anthropic": ProviderKind("manifold.providers.anthropic.provider", "AnthropicProvider"),
    "local_embedding": ProviderKind("manifold.providers.local.embedding", "LocalEmbeddingProvider"),
    "python": ProviderKind("manifold.providers.python_handler.provider", "PythonHandlerProvider"),
}


# Deployment keys only some kinds read. Setting one on another kind is a config error, not a silent no-op.
KIND_ONLY_FIELDS: dict[str, frozenset[str]] = {
    "api_version": frozenset({"azure", "anthropic"}),
    "model_path": frozenset({"local", "local_embedding"}),
    "context_length": frozenset({"local"}),
    "threads": frozenset({"local", "local_embedding"}),
    "mode": frozenset({"kserve_v2"}),
    "model_version": frozenset({"kserve_v2"}),
    "chat_template": frozenset({"kserve_v2"}),
    "generate_parameters_in": frozenset({"kserve_v2"}),
    "default_max_tokens": frozenset({"anthropic", "local"}),
    "repeat_penalty": frozenset({"local"}),
    "supports_completions": frozenset({"openai", "azure"}),
    "handler": frozenset({"python"}),
}


def misplaced_fields(deployment: Deployment) -> list[str]:
    """`key: only for …` for each kind-specific key set on a deployment of another kind."""
    import msgspec

    defaults = {f.name: f.default for f in msgspec.structs.fields(type(deployment))}
    out = []
    for name, kinds in KIND_ONLY_FIELDS.items():
        if deployment.provider not in kinds and getattr(deployment, name) != defaults.get(name):
            out.append(f"{name}: only read by provider {' / '.join(sorted(kinds))}, not {deployment.provider!r}")
    return out


def create_provider(deployment: Deployment) -> Provider:
    return PROVIDERS[deployment.provider].load()(deployment)
