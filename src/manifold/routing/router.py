"""Public model names → deployments (each a started provider)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from manifold.config import Deployment
from manifold.errors import ModelNotFoundError
from manifold.providers.base import Provider
from manifold.providers.registry import create_provider


class ModelGroup:
    __slots__ = ("created", "name", "owned_by", "providers")

    def __init__(self, name: str, providers: list[Provider], created: int) -> None:
        self.name = name
        self.providers = providers
        self.created = created
        first = providers[0].deployment
        self.owned_by = first.owned_by or first.provider


class Router:
    def __init__(
        self,
        deployments: list[Deployment],
        factory: Callable[[Deployment], Provider] = create_provider,
    ) -> None:
        created = int(time.time())
        by_name: dict[str, list[Provider]] = {}
        self.providers: list[Provider] = []
        for dep in deployments:
            provider = factory(dep)
            self.providers.append(provider)
            by_name.setdefault(dep.model_name, []).append(provider)
        self.groups = {name: ModelGroup(name, ps, created) for name, ps in by_name.items()}

    def group(self, model: str) -> ModelGroup:
        group = self.groups.get(model)
        if group is None:
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.", param="model"
            )
        return group

    def pick(self, model: str) -> Provider:
        providers = self.group(model).providers
        return providers[0] if len(providers) == 1 else random.choice(providers)

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.providers))

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.providers), return_exceptions=True)

    async def readiness(self, probe_timeout: float = 5.0) -> list[tuple[Provider, bool]]:
        async def probe(p: Provider) -> bool:
            try:
                return await asyncio.wait_for(p.ready(), probe_timeout)
            except TimeoutError:
                return False

        results = await asyncio.gather(*(probe(p) for p in self.providers))
        return list(zip(self.providers, results, strict=True))
