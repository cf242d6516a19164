"""Find a handler named `pkg.module:attribute` (config key `handler`, `manifold serve --handler`)."""

from __future__ import annotations

import importlib
import re
from typing import Any

_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class HandlerNotFound(Exception):
    """The reference is malformed or names nothing importable; the message says which."""


def resolve(ref: str) -> Any:
    """The object `ref` names (a class is returned as is; the handler instantiates it)."""
    if not _REF.match(ref):
        raise HandlerNotFound(f"{ref!r} is not of the form 'package.module:function'")
    module_name, _, attribute = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise HandlerNotFound(
                f"cannot import module {module_name!r} (is its directory the working directory or on PYTHONPATH?)"
            ) from None
        raise  # the module exists but imports something missing: its own error, with its traceback
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            where = module_name + "".join("." + p for p in attribute.split(".")[:i])
            raise HandlerNotFound(f"{where!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj
