"""Which models a key may use: its `models` (and its team's), as names, wildcards and aliases the way the router
resolves them (routing/addressing.py). A model a key may not use is answered exactly like a model that does not
exist (404 `model_not_found`), so nothing about it is revealed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from manifold.access.principal import Principal

__all__ = ["allowed", "model_allowed"]

# name → the group it names exactly (a group name or an alias), None for a wildcard match or an unknown name
GroupOf = Callable[[str], str | None]


def model_allowed(models: Sequence[str], requested: str, group: str, group_of: GroupOf) -> bool:
    """Whether `models` allows the name `requested`, which resolved to the group named `group`.

    An entry allows: the same name; its group when the entry names a group or an alias exactly (so an alias and
    its target allow each other); with a trailing `*`, every name with that prefix (`openai/*`, which is also how
    a key is given a whole wildcard group)."""
    for entry in models:
        if entry in (requested, group):
            return True
        if entry.endswith("*"):
            if requested.startswith(entry[:-1]):
                return True
        elif group_of(entry) == group:
            return True
    return False


def allowed(principal: Principal, requested: str, group: str, group_of: GroupOf) -> bool:
    if principal.models is not None and not model_allowed(principal.models, requested, group, group_of):
        return False
    return principal.team_models is None or model_allowed(principal.team_models, requested, group, group_of)
