"""`manifold serve | check | models | keys | usage`."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

import msgspec

from manifold.config import Config, environment_problems, secrets_of, serves_embedded_default
from manifold.errors import ConfigError
from manifold.validation import load_config

CONFIG_ENV = "MANIFOLD_CONFIG"
# `serve --handler`: what each worker process serves (manifold.frontend, docs/frontend.md).
HANDLER_ENV = "MANIFOLD_HANDLER"
HANDLER_ENDPOINTS_ENV = "MANIFOLD_HANDLER_ENDPOINTS"
HANDLER_URL_INFO_ENV = "MANIFOLD_HANDLER_URL_INFO"
LOG_LEVEL_ENV = "MANIFOLD_LOG_LEVEL"
# The address `serve` binds (`--host` or server.host): each worker's app warns when it is not a loopback one and
# no key protects it (access/auth.py).
BIND_HOST_ENV = "MANIFOLD_BIND_HOST"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manifold", description="An OpenAI-compatible gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server (no --config: the embedded local model)")
    serve.add_argument("--config", help="YAML or JSON config file")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, or server.host)")
    serve.add_argument("--port", type=int, help="port (default 8080, or server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1, or server.workers)")
    serve.add_argument("--log-level", help="critical|error|warning|info|debug")
    serve.add_argument(
        "--handler",
        help="serve the OpenAI API from a Python handler, package.module:function (docs/frontend.md)",
    )
    serve.add_argument(
        "--endpoints",
        help="with --handler: the endpoint groups to mount, comma-separated (default: all of "
        "chat_completions,responses,completions,embeddings,images,models)",
    )
    serve.add_argument(
        "--include-url-info",
        action="store_true",
        help="with --handler: pass request_path and request_method to the handler (a dispatcher)",
    )
    check = sub.add_parser("check", help="validate a config file and print every problem")
    check.add_argument("--config", required=True)
    models = sub.add_parser("models", help="list the public model names of a config")
    models.add_argument("--config")
    from manifold.access import commands as access_commands

    access_commands.add_parser(sub)
    usage = sub.add_parser("usage", help="the usage ledger's spend and tokens, grouped (docs/access.md)")
    usage.add_argument("--config", help="the server's config file (its storage: section names the database)")
    usage.add_argument("--group-by", default="key", help="key (default), team, user, model, deployment or day")
    usage.add_argument("--start", help="from this time (inclusive): unix seconds or an ISO date or date-time")
    usage.add_argument("--end", help="until this time (exclusive): unix seconds or an ISO date or date-time")
    usage.add_argument("--json", action="store_true", help="print the /admin/usage JSON answer instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Handlers (`--handler`, `provider: python`) are named relative to the working directory, as `python -m`
    # and uvicorn's own command line find them.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    handler = getattr(args, "handler", None)
    try:
        config = load_config(args.config)
        if handler is not None:
            config = _handler_config(args, config)
        if args.command in ("check", "serve"):
            _refuse(environment_problems(_bound(args, config)))
    except ConfigError as exc:
        where = args.config or "the default configuration"
        print(f"{where}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.command == "check":
        names = sorted({d.model_name for d in config.model_list})
        print(f"{args.config}: OK ({len(config.model_list)} deployment(s): {', '.join(names) or 'none'})")
        if serves_embedded_default(config):
            print("  no model_list: serving the embedded models smollm2 and minilm (model_list: [] serves none)")
        return 0
    if args.command == "models":
        for name in sorted({d.model_name for d in config.model_list}):
            print(name)
        for alias, target in sorted(config.router.model_alias.items()):
            print(f"{alias} -> {target}")
        return 0
    if args.command == "keys":
        from manifold.access import commands as access_commands

        return access_commands.run(args, config)
    if args.command == "usage":
        from manifold.cli_usage import usage_command

        return usage_command(args, config)
    return _serve(args, config)


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def _bound(args: argparse.Namespace, config: Config) -> Config:
    """The config as `serve` will run it: `--host` and `--port` replace `server.host` and `server.port`."""
    host, port = getattr(args, "host", None), getattr(args, "port", None)
    server = config.server
    if host is not None:
        server = msgspec.structs.replace(server, host=host)
    if port is not None:
        server = msgspec.structs.replace(server, port=port)
    return msgspec.structs.replace(config, server=server)


def _serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    from manifold.server.protocol import GuardedHttpToolsProtocol

    settings = config.server
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.workers
    level = (args.log_level or settings.log_level).lower()
    from manifold.observability.logging import configure as configure_logging

    configure_logging(level, settings.log_format, secrets_of(config))
    os.environ[LOG_LEVEL_ENV] = level
    os.environ[BIND_HOST_ENV] = host
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    else:
        os.environ.pop(CONFIG_ENV, None)
    for name in (HANDLER_ENV, HANDLER_ENDPOINTS_ENV, HANDLER_URL_INFO_ENV):
        os.environ.pop(name, None)
    if args.handler is not None:
        os.environ[HANDLER_ENV] = args.handler
        if args.endpoints:
            os.environ[HANDLER_ENDPOINTS_ENV] = args.endpoints
        if args.include_url_info:
            os.environ[HANDLER_URL_INFO_ENV] = "1"
    with _metrics_for_workers(config, workers, host):
        uvicorn.run(
            "manifold.cli:app_factory",
            factory=True,
            host=host,
            port=port,
            workers=workers if workers > 1 else None,
            loop="uvloop" if sys.platform != "win32" else "asyncio",
            http=GuardedHttpToolsProtocol,
            lifespan="on",
            access_log=False,
            log_level=level,
            log_config=None,  # Manifold's handler (observability.logging) formats uvicorn's lines too
            server_header=False,
            proxy_headers=False,
            date_header=True,
            timeout_graceful_shutdown=10,
        )
    return 0


@contextlib.contextmanager
def _metrics_for_workers(config: Config, workers: int, host: str) -> Iterator[None]:
    """With several workers: prometheus-client's multiprocess mode in a directory of our own (set before any
    worker imports prometheus-client, removed at exit), and `metrics.port` served by this process."""
    if workers <= 1 or not config.metrics.enabled:
        os.environ.pop(MULTIPROC_ENV, None)
        yield
        return
    with tempfile.TemporaryDirectory(prefix="manifold-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory
        if config.metrics.port is not None:
            from manifold.observability.metrics import serve_http

            serve_http(config.metrics.port, host, config.metrics.path)
        try:
            yield
        finally:
            os.environ.pop(MULTIPROC_ENV, None)


def _handler_config(args: argparse.Namespace, config: Config) -> Config:
    """`serve --handler`: the config gives the server and storage settings; the handler is the only backend.
    The handler and the endpoint groups are checked now, before the server starts."""
    from manifold.frontend.app import Endpoint, HandlerNotFound, load_handler

    problems = []
    if args.config and config.model_list and not serves_embedded_default(config):
        problems.append(
            "model_list: must be empty with --handler (to put a handler beside other backends, list it in "
            "model_list with provider: python)"
        )
    try:
        load_handler(args.handler)
    except HandlerNotFound as exc:
        problems.append(f"--handler: {exc}")
    allowed = {e.value for e in Endpoint}
    for name in (args.endpoints or "").split(","):
        if name.strip() and name.strip() not in allowed:
            problems.append(f"--endpoints: {name.strip()!r} is not one of: {', '.join(e.value for e in Endpoint)}")
    if problems:
        raise ConfigError(problems)
    return msgspec.structs.replace(config, model_list=[])


def app_factory() -> object:
    """Each worker process builds its app from the config file named in $MANIFOLD_CONFIG (and, with
    `--handler`, around the handler named in $MANIFOLD_HANDLER)."""
    from manifold.server.protocol import configure

    # A native backend that crashes the process (a SIGSEGV in llama.cpp, say) must not vanish without a word:
    # Python then prints "Fatal Python error: Segmentation fault" and every thread's stack to stderr.
    faulthandler.enable()
    config = load_config(os.environ.get(CONFIG_ENV))
    configure(config.server)
    level = os.environ.get(LOG_LEVEL_ENV)
    if level is not None:  # a worker process: logging as the parent set it up
        from manifold.observability.logging import configure as configure_logging

        configure_logging(level, config.server.log_format, secrets_of(config))
    handler = os.environ.get(HANDLER_ENV)
    if handler is not None:
        return _frontend_app(handler, config)
    from manifold.server.app import build_app

    host = os.environ.get(BIND_HOST_ENV)
    if host is not None and host != config.server.host:
        config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, host=host))
    return build_app(config)


def _frontend_app(ref: str, config: Config) -> object:
    from manifold.frontend.app import OpenAIFrontend, load_handler

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    endpoints = [e.strip() for e in os.environ.get(HANDLER_ENDPOINTS_ENV, "").split(",") if e.strip()] or None
    prefixes = config.server.prefixes
    app = OpenAIFrontend(
        load_handler(ref),
        endpoints,
        prefixes[0],
        include_url_info=os.environ.get(HANDLER_URL_INFO_ENV) == "1",
        storage=config.storage,
        settings=config.server,
        responses=config.responses,
        metrics=config.metrics,
        tracing=config.tracing,
    )
    for prefix in prefixes[1:]:
        app.add_endpoints(endpoints, prefix)
    return app
