"""Manifold: an OpenAI-compatible gateway and serving frontend.

The public API is small and pinned by a test: build an ASGI app from a config, or load one from a file.
`import manifold` stays light (every `import manifold.x` runs it first): the names load on first use.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # not `typing`'s: importing typing would cost more than the rest of this module
if TYPE_CHECKING:
    from typing import Any

    from manifold.config import Config, Deployment, ServerSettings, Timeouts
    from manifold.errors import ConfigError, ManifoldError
    from manifold.server.app import ManifoldApp, build_app

    # Loaded and validated (`manifold.config` decodes, `manifold.validation` judges what needs providers and
    # routing).
    from manifold.validation import load_config, parse_config

__version__ = "0.1.0"

# public name → the module that defines it
_HOMES = {
    "Config": "manifold.config",
    "Deployment": "manifold.config",
    "ServerSettings": "manifold.config",
    "Timeouts": "manifold.config",
    "load_config": "manifold.validation",
    "parse_config": "manifold.validation",
    "ConfigError": "manifold.errors",
    "ManifoldError": "manifold.errors",
    "ManifoldApp": "manifold.server.app",
    "build_app": "manifold.server.app",
}

__all__ = [
    "Config",
    "ConfigError",
    "Deployment",
    "ManifoldApp",
    "ManifoldError",
    "ServerSettings",
    "Timeouts",
    "__version__",
    "build_app",
    "load_config",
    "parse_config",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'manifold' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
