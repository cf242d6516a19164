"""Manifold: an OpenAI-compatible gateway and serving frontend.

The public API is small and pinned by a test: build an ASGI app from a config, or load one from a file.
"""

from manifold.config import Config, Deployment, ServerSettings, Timeouts
from manifold.errors import ConfigError, ManifoldError
from manifold.server.app import ManifoldApp, build_app

# Loaded and validated (`manifold.config` decodes, `manifold.validation` judges what needs providers and routing).
from manifold.validation import load_config, parse_config

__version__ = "0.1.0"

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
