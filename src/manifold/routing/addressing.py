"""Public model names → model groups: exact names, aliases, and wildcard groups.

A deployment whose `model_name` ends with `*` (`openai/*`, `*`) is a wildcard group: it serves every name with
that prefix that no exact group or alias claims, and forwards the part the `*` matched as the upstream model
(its `model`, when set, is a pattern too: `model: accounts/acme/models/*`). A wildcard group named after a
provider (`anthropic/*`) is that provider's default deployment: clients address it as `anthropic/<model>`.
The longest matching prefix wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from manifold.config import DeploymentBase, GroupSettings, RouterSettings

__all__ = ["NameTable", "is_wildcard", "router_problems", "wildcard_upstream"]

G = TypeVar("G")
WILDCARD = "*"


def is_wildcard(model_name: str) -> bool:
    return model_name.endswith(WILDCARD)


def wildcard_upstream(pattern: str | None, rest: str) -> str:
    """The upstream model for the name part `rest` matched by a wildcard group's `*`."""
    if pattern and WILDCARD in pattern:
        return pattern.replace(WILDCARD, rest, 1)
    return rest


class NameTable(Generic[G]):
    """Resolves a requested name to `(group, rest)`; `rest` is None for exact groups, else what `*` matched."""

    __slots__ = ("_exact", "_patterns")

    def __init__(self, groups: dict[str, G], aliases: dict[str, str]) -> None:
        self._exact: dict[str, tuple[G, str | None]] = {}
        patterns: list[tuple[str, G]] = []
        for name, group in groups.items():
            if is_wildcard(name):
                patterns.append((name[: -len(WILDCARD)], group))
            else:
                self._exact[name] = (group, None)
        self._patterns = sorted(patterns, key=lambda p: len(p[0]), reverse=True)
        for alias, target in aliases.items():
            found = self.resolve(target)
            if found is not None:
                self._exact[alias] = found

    def resolve(self, name: str) -> tuple[G, str | None] | None:
        found = self._exact.get(name)
        if found is not None:
            return found
        for prefix, group in self._patterns:
            if name.startswith(prefix) and len(name) > len(prefix):
                return group, name[len(prefix) :]
        return None


def router_problems(settings: RouterSettings, deployments: Sequence[DeploymentBase]) -> list[str]:
    """Names the router section refers to that no deployment serves, and inconsistent deployments."""
    problems: list[str] = []
    names = {d.model_name for d in deployments}
    ids: dict[str, int] = {}
    group_sizes: dict[str, int] = {}
    for i, dep in enumerate(deployments):
        where = f"model_list[{i}]"
        if WILDCARD in dep.model_name[:-1]:
            problems.append(f"{where}.model_name: {dep.model_name!r}: '*' may only end a name (e.g. 'openai/*')")
        if is_wildcard(dep.model_name) and dep.model is not None and WILDCARD not in dep.model:
            problems.append(
                f"{where}.model: a wildcard group forwards the requested name; leave `model` out or make it "
                f"a pattern with '*' (e.g. 'accounts/acme/models/*'), not {dep.model!r}"
            )
        # The id the router gives it (an explicit one, else `<model_name>#<index in its group>`): two equal ids
        # would make `x-manifold-deployment` and the logs name one deployment for another.
        in_group = group_sizes.get(dep.model_name, 0)
        group_sizes[dep.model_name] = in_group + 1
        dep_id = dep.id if dep.id is not None else f"{dep.model_name}#{in_group}"
        if dep_id in ids:
            problems.append(f"{where}.id: {dep_id!r} is already the id of model_list[{ids[dep_id]}]")
        ids.setdefault(dep_id, i)

    table: NameTable[str] = NameTable({n: n for n in names}, {})

    def unknown(name: str) -> bool:
        return table.resolve(name) is None and name not in settings.model_alias

    for alias, target in settings.model_alias.items():
        where = f"router.model_alias.{alias}"
        if alias in names:
            problems.append(f"{where}: a deployment already has the model_name {alias!r}; an alias cannot hide it")
        elif table.resolve(target) is None:
            problems.append(
                f"{where}: {target!r} is not the model_name of a deployment (nor matched by a wildcard group)"
            )
    problems.extend(_fallback_problems("router", settings, unknown))
    for name, group in settings.groups.items():
        where = f"router.groups.{name}"
        if name not in names:
            problems.append(f"{where}: no deployment has this model_name")
        problems.extend(_fallback_problems(where, group, unknown))
    return problems


def _fallback_problems(
    where: str, settings: RouterSettings | GroupSettings, unknown: Callable[[str], bool]
) -> Iterable[str]:
    for key in ("fallbacks", "context_window_fallbacks"):
        for i, name in enumerate(getattr(settings, key) or ()):
            if unknown(name):
                yield f"{where}.{key}[{i}]: {name!r} is not a model name, alias or wildcard match"
