"""The one place backend kinds are named. Each maps to its provider class, imported only when used; the keys each
kind reads are its Struct in config.py (`DEPLOYMENT_KINDS`, the same names)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from manifold.config import DeploymentBase
    from manifold.providers.base import Provider


class ProviderKind(NamedTuple):
    module: str
    class_name: str

    def load(self) -> type[Provider]:
        cls: type[Provider] = getattr(importlib.import_module(self.module), self.class_name)
        return cls

    def check(self, deployment: DeploymentBase) -> list[str]:
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


# Kinds with more than one engine (`engine:` on the deployment): (kind, engine) → its provider, when the engine
# is not the kind's default.
ENGINES: dict[tuple[str, str], ProviderKind] = {
    ("local", "openvino"): ProviderKind("manifold.providers.local.openvino", "OpenVinoModelProvider"),
    ("local", "llama_cpp_batched"): ProviderKind("manifold.providers.local.llama_batched", "LlamaBatchedModelProvider"),
}


def provider_kind(deployment: DeploymentBase) -> ProviderKind:
    engine = getattr(deployment, "engine", None)
    if isinstance(engine, str) and (deployment.provider, engine) in ENGINES:
        return ENGINES[deployment.provider, engine]
    return PROVIDERS[deployment.provider]


def create_provider(deployment: DeploymentBase) -> Provider:
    return provider_kind(deployment).load()(deployment)
