"""`manifold serve | check | models`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from manifold.config import Config, load_config
from manifold.errors import ConfigError

CONFIG_ENV = "MANIFOLD_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manifold", description="An OpenAI-compatible gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server (no --config: the embedded local model)")
    serve.add_argument("--config", help="YAML or JSON config file")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, or server.host)")
    serve.add_argument("--port", type=int, help="port (default 8080, or server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1, or server.workers)")
    serve.add_argument("--log-level", help="critical|error|warning|info|debug")
    check = sub.add_parser("check", help="validate a config file and print every problem")
    check.add_argument("--config", required=True)
    models = sub.add_parser("models", help="list the public model names of a config")
    models.add_argument("--config")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        where = args.config or "the default configuration"
        print(f"{where}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.command == "check":
        names = sorted({d.model_name for d in config.model_list})
        print(f"{args.config}: OK ({len(config.model_list)} deployment(s): {', '.join(names) or 'none'})")
        return 0
    if args.command == "models":
        for name in sorted({d.model_name for d in config.model_list}):
            print(name)
        for alias, target in sorted(config.router.model_alias.items()):
            print(f"{alias} -> {target}")
        return 0
    return _serve(args, config)


def _serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    settings = config.server
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.workers
    level = (args.log_level or settings.log_level).lower()
    logging.basicConfig(
        level=level.upper() if level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    else:
        os.environ.pop(CONFIG_ENV, None)
    uvicorn.run(
        "manifold.cli:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=level,
        server_header=False,
        proxy_headers=False,
        date_header=True,
        timeout_graceful_shutdown=10,
    )
    return 0


def app_factory() -> object:
    """Each worker process builds its app from the config file named in $MANIFOLD_CONFIG."""
    from manifold.server.app import build_app

    return build_app(load_config(os.environ.get(CONFIG_ENV)))
